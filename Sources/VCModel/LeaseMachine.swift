/// The node lease as a state machine: it decides when to register, renew and self-fence,
/// and the shell (`NodeLease` in VCDaemon) only carries its directives out and reports
/// what etcd answered. It never reads a clock: every event carries `now`, taken by the
/// shell from `ContinuousClock` (CLOCK_BOOTTIME on Linux, so a host that was suspended
/// sees the time that passed meanwhile, as etcd's members did).
///
/// What etcd promises (`shared/notes/multinode.md`): a TTL is a minimum. The lease cannot
/// expire on etcd's side before `send time of the last renewal that succeeded + the TTL
/// etcd granted`, because etcd took that renewal no earlier than it was sent; it may well
/// live longer (the expiry scan runs every 0.5 s, and a new etcd leader gives every lease
/// its full TTL again plus an election timeout). So the node counts from the send time,
/// never from the reply, never from what etcd reports after a leader change, and gives up
/// everything it does under the lease a margin before that instant: by then it may be
/// dead to the others, who fence it at the storage and start its VMs elsewhere.
///
/// After a self-fence the node never acts under that lease again: replies about it are
/// ignored, ``lease(at:)`` no longer returns it, and the registration that follows says
/// which lease was fenced, so that its VM incarnations stay stopped (they are placed anew,
/// on other nodes or this one, with a new generation).
public struct LeaseMachine: Sendable, Equatable {
    public typealias Instant = ContinuousClock.Instant

    /// How long the lease lives, how often it is renewed, and how early the node gives up.
    public struct Timers: Sendable, Equatable {
        /// The TTL asked of etcd; etcd may grant more (its minimum is 1.5 × its election
        /// timeout), and the machine then counts with what it granted.
        public let ttlSeconds: Int
        /// From the send time of one renewal that succeeded to the next renewal.
        public let renewalPeriod: Duration
        /// The node self-fences this long before its lease can expire on etcd's side. It
        /// covers destroying every VM and taking every role's address off (tens of ms per
        /// VM, done in parallel), the shell waking late on a loaded host, and clock rates.
        public let margin: Duration
        /// After a renewal that failed, the next one is sent this much later.
        public let retryDelay: Duration

        /// One second: destroying TCG guests and removing addresses took well under that
        /// on the testbed, and it leaves TTL − 1 s of renewals at the smallest TTL, 2 s.
        public static let defaultMargin = Duration.seconds(1)
        /// Renewals that fail quickly (a refused connection) are tried again this soon;
        /// one that hangs is bounded by its deadline anyway.
        public static let defaultRetryDelay = Duration.milliseconds(250)

        /// - Parameters:
        ///   - renewalPeriod: default a third of the TTL, as `etcdctl lease keep-alive`.
        ///   - retryDelay: default 250 ms, and never more than the renewal period.
        public init(
            ttlSeconds: Int, renewalPeriod: Duration? = nil, margin: Duration = Self.defaultMargin,
            retryDelay: Duration? = nil
        ) throws(ModelError) {
            guard ttlSeconds >= 2 else {
                throw .invalidTimers(
                    setting: "leaseTTLSeconds \(ttlSeconds)",
                    reason: "etcd's smallest lease is 2 s (at its default timers); use 2 or more")
            }
            let ttl = Duration.seconds(ttlSeconds)
            let period = renewalPeriod ?? ttl / 3
            guard margin > .zero, margin < ttl else {
                throw .invalidTimers(
                    setting: "a self-fence margin of \(margin.readableSeconds)",
                    reason: "it must be more than 0 and less than the TTL, \(ttl.readableSeconds)")
            }
            guard period > .zero, period + margin < ttl else {
                throw .invalidTimers(
                    setting: "a renewal every \(period.readableSeconds)",
                    reason:
                        "the first renewal would come after the self-fence point (TTL \(ttl.readableSeconds) − margin \(margin.readableSeconds)); renew more often or lower the margin"
                )
            }
            let retry = retryDelay ?? min(Self.defaultRetryDelay, period)
            guard retry > .zero, retry <= period else {
                throw .invalidTimers(
                    setting: "a renewal retry after \(retry.readableSeconds)",
                    reason: "it must be more than 0 and at most the renewal period, \(period.readableSeconds)")
            }
            self.ttlSeconds = ttlSeconds
            self.renewalPeriod = period
            self.margin = margin
            self.retryDelay = retry
        }
    }

    /// Why the node self-fences.
    public enum FenceReason: String, Sendable, Equatable, Codable {
        /// The self-fence point came and no renewal had succeeded since the one that set
        /// it: etcd is unreachable or too slow. In time: the lease lives at least `margin`
        /// longer.
        case notRenewedInTime
        /// The node noticed only after the instant its lease could have expired: it was
        /// paused (SIGSTOP, a frozen VM) or starved past its deadline. Another node may
        /// already run its VMs: it stands down without a renewal.
        case deadlinePassed
        /// etcd answered that the lease does not exist: it expired or was revoked.
        case leaseGone
        /// vcd is stopping: nothing may keep running under a lease nobody renews.
        case stopping
    }

    /// What the shell does next, in the order given.
    public enum Directive: Sendable, Equatable {
        /// Grant a lease of `ttlSeconds`, write the node's registration under it, then
        /// report ``granted(lease:ttlSeconds:sentAt:now:)`` or
        /// ``registrationFailed(sentAt:now:)`` with this `sentAt`. When `fenced` is set, the
        /// node self-fenced that lease: the VM incarnations placed here under it were
        /// destroyed and are never started again. The lease may still be alive on etcd (a
        /// short cut-off), so the registration must say so (the others cannot tell from
        /// the registration key, which never went away): their VMs are placed anew with
        /// a new generation, as for a node that died.
        case register(ttlSeconds: Int, sentAt: Instant, fenced: Int64?)
        /// `lease` is held: work under it (registration, gateway keys and addresses,
        /// starting VMs) may go on until `until`, the self-fence point, and every etcd
        /// request made under it is bounded by that instant.
        case hold(lease: Int64, until: Instant)
        /// Send one keep-alive of `lease`, bounded by `deadline` (the time left before it
        /// can have expired on etcd's side, less the margin), and report
        /// ``renewed(lease:ttlSeconds:sentAt:now:)`` or
        /// ``renewalFailed(lease:sentAt:now:)`` with this `sentAt`.
        case renew(lease: Int64, sentAt: Instant, deadline: Instant)
        /// Stop acting under `lease` now: destroy every VM on this node (virDomainDestroy,
        /// not a shutdown: a guest that takes its time to stop would outlive the lease),
        /// take every gateway address and passive role off, write nothing more under the
        /// lease. Report ``fenced(now:)`` once nothing runs any more; until then nothing is
        /// registered, and the watchdog is not pinged (``watchdogMayPing(now:interval:)``).
        case selfFence(lease: Int64, reason: FenceReason)
        /// Revoke `lease`, best effort: a lease this node no longer uses (fenced, stopped,
        /// or granted too late to be of use). A failure changes nothing: it expires.
        case revoke(lease: Int64)
    }

    /// The lease this node holds and what it knows of its life on etcd's side.
    public struct Tenure: Sendable, Equatable {
        public let lease: Int64
        /// The TTL etcd granted. A later answer never makes it longer.
        public let ttl: Duration
        /// The earliest instant the lease can have expired on etcd's side: the send time of
        /// the last grant or renewal that succeeded, plus the TTL.
        public fileprivate(set) var expiresAt: Instant
        /// The send time of the renewal in flight, if one is.
        public fileprivate(set) var pending: Instant?
        /// When the next renewal is due, if none is in flight.
        public fileprivate(set) var nextRenewal: Instant
    }

    public enum State: Sendable, Equatable {
        /// Not started.
        case idle
        /// A registration sent at `sentAt` is in flight.
        case registering(sentAt: Instant)
        /// The last registration failed; the next is due at `until`.
        case waiting(until: Instant)
        case holding(Tenure)
        /// Self-fencing `lease`: the shell is stopping everything that ran under it.
        /// `thenStop` when vcd stops as soon as the fence is done.
        case fencing(lease: Int64, reason: FenceReason, thenStop: Bool)
        case stopped
    }

    public let timers: Timers
    public private(set) var state: State = .idle
    /// The lease fenced last, until a registration that says so succeeds.
    public private(set) var unreportedFence: Int64?

    public init(timers: Timers) { self.timers = timers }

    // MARK: - events

    /// vcd starts: register.
    public mutating func start(now: Instant) -> [Directive] {
        guard case .idle = state else { return [] }
        return register(now: now)
    }

    /// The registration sent at `sentAt` succeeded with lease `lease` of `ttlSeconds`.
    /// A grant that comes too late to leave any time before the self-fence point, or that
    /// nothing waits for any more, is revoked.
    public mutating func granted(lease: Int64, ttlSeconds: Int, sentAt: Instant, now: Instant) -> [Directive] {
        guard case .registering(let sent) = state, sent == sentAt else { return [.revoke(lease: lease)] }
        let ttl = Duration.seconds(max(ttlSeconds, 0))
        let tenure = Tenure(lease: lease, ttl: ttl, expiresAt: sentAt + ttl, nextRenewal: sentAt + timers.renewalPeriod)
        guard now < fencePoint(tenure) else {
            state = .waiting(until: now)
            return [.revoke(lease: lease)] + tick(now: now)
        }
        state = .holding(tenure)
        unreportedFence = nil
        return [.hold(lease: lease, until: fencePoint(tenure))] + tick(now: now)
    }

    /// The registration sent at `sentAt` failed; it is tried again a renewal period later.
    public mutating func registrationFailed(sentAt: Instant, now: Instant) -> [Directive] {
        guard case .registering(let sent) = state, sent == sentAt else { return tick(now: now) }
        state = .waiting(until: now + timers.renewalPeriod)
        return tick(now: now)
    }

    /// etcd answered the keep-alive sent at `sentAt` with `ttlSeconds` (0: the lease is
    /// gone). An answer that comes at or after the self-fence point counts as lost: the
    /// node has given up by then, whatever etcd says. One about another lease or request
    /// is ignored. A TTL larger than the granted one (etcd extends leases on a leader
    /// change) is not believed: the time left is counted from the send time.
    public mutating func renewed(lease: Int64, ttlSeconds: Int, sentAt: Instant, now: Instant) -> [Directive] {
        guard case .holding(var tenure) = state, tenure.lease == lease, tenure.pending == sentAt else {
            return tick(now: now)
        }
        if now >= fencePoint(tenure) { return tick(now: now) }
        tenure.pending = nil
        guard ttlSeconds > 0 else { return fence(tenure, reason: .leaseGone) }
        let left = min(Duration.seconds(ttlSeconds), tenure.ttl)
        tenure.expiresAt = max(tenure.expiresAt, sentAt + left)
        // A period after the send time the deadline stands on: an answer that proved less
        // than an earlier one (a shorter TTL) has the next renewal come sooner.
        tenure.nextRenewal = max(tenure.expiresAt - tenure.ttl + timers.renewalPeriod, sentAt + timers.retryDelay)
        state = .holding(tenure)
        return [.hold(lease: lease, until: fencePoint(tenure))] + tick(now: now)
    }

    /// The keep-alive sent at `sentAt` failed (no member answered, or not in time); the
    /// next one goes out after the retry delay if there is time left.
    public mutating func renewalFailed(lease: Int64, sentAt: Instant, now: Instant) -> [Directive] {
        guard case .holding(var tenure) = state, tenure.lease == lease, tenure.pending == sentAt else {
            return tick(now: now)
        }
        tenure.pending = nil
        tenure.nextRenewal = now + timers.retryDelay
        state = .holding(tenure)
        return tick(now: now)
    }

    /// Time passed: renew when due, self-fence at the self-fence point, register again
    /// when due. The shell calls it at ``nextWake`` at the latest, and first thing after
    /// any pause it may have had.
    public mutating func tick(now: Instant) -> [Directive] {
        switch state {
        case .idle, .registering, .fencing, .stopped:
            return []
        case .waiting(let until):
            return now >= until ? register(now: now) : []
        case .holding(var tenure):
            if now >= tenure.expiresAt { return fence(tenure, reason: .deadlinePassed) }
            if now >= fencePoint(tenure) { return fence(tenure, reason: .notRenewedInTime) }
            guard tenure.pending == nil, now >= tenure.nextRenewal else { return [] }
            tenure.pending = now
            state = .holding(tenure)
            return [.renew(lease: tenure.lease, sentAt: now, deadline: fencePoint(tenure))]
        }
    }

    /// The self-fence is done: nothing of the fenced lease runs here any more. The lease
    /// is revoked (so the others need not wait for it to expire before they move its VMs)
    /// and the node registers anew, saying which lease it fenced; or, when vcd stops, it
    /// stops.
    public mutating func fenced(now: Instant) -> [Directive] {
        guard case .fencing(let lease, let reason, let thenStop) = state else { return [] }
        if reason == .stopping || thenStop {
            state = .stopped
            return [.revoke(lease: lease)]
        }
        unreportedFence = lease
        return [.revoke(lease: lease)] + register(now: now)
    }

    /// vcd stops: what runs under the lease is stopped first (a lease nobody renews
    /// lapses, and then the others start its VMs elsewhere), then the lease is revoked.
    public mutating func stop(now: Instant) -> [Directive] {
        switch state {
        case .holding(let tenure):
            return fence(tenure, reason: .stopping)
        case .fencing(let lease, let reason, _):
            state = .fencing(lease: lease, reason: reason, thenStop: true)
            return []
        case .idle, .registering, .waiting, .stopped:
            // A grant still in flight is revoked when it lands (`granted` sees no
            // registration waiting for it).
            state = .stopped
            return []
        }
    }

    // MARK: - what the shell asks

    /// The lease to act under at `now`, nil when the node holds none or is past its
    /// self-fence point (whether or not a tick has said so yet).
    public func lease(at now: Instant) -> Int64? {
        guard case .holding(let tenure) = state, now < fencePoint(tenure) else { return nil }
        return tenure.lease
    }

    /// The instant every etcd request made under the lease must be done by: the
    /// self-fence point. Nil when no lease is held.
    public var actUntil: Instant? {
        guard case .holding(let tenure) = state else { return nil }
        return fencePoint(tenure)
    }

    /// When the shell must call ``tick(now:)`` next if no answer comes first; nil when only
    /// an answer (or ``fenced(now:)``) moves the machine on.
    public var nextWake: Instant? {
        switch state {
        case .idle, .registering, .fencing, .stopped: return nil
        case .waiting(let until): return until
        case .holding(let tenure):
            return tenure.pending == nil ? min(tenure.nextRenewal, fencePoint(tenure)) : fencePoint(tenure)
        }
    }

    /// Whether a systemd watchdog ping (which keeps vcd alive for `interval`) is safe at
    /// `now`. While a lease is held, only if the watchdog would still fire before the
    /// self-fence point should vcd hang right after the ping: the watchdog then backs the
    /// self-fence (with a kill mode that stops QEMU too). So `WatchdogSec` must be shorter
    /// than TTL − margin − renewal period, or the pings stop while all is well. Never while
    /// a self-fence is under way: if it hangs, systemd finishes it.
    public func watchdogMayPing(now: Instant, interval: Duration) -> Bool {
        switch state {
        case .holding(let tenure): return now + interval <= fencePoint(tenure)
        case .idle, .registering, .waiting: return true
        case .fencing, .stopped: return false
        }
    }

    // MARK: - steps

    private func fencePoint(_ tenure: Tenure) -> Instant { tenure.expiresAt - timers.margin }

    private mutating func fence(_ tenure: Tenure, reason: FenceReason) -> [Directive] {
        state = .fencing(lease: tenure.lease, reason: reason, thenStop: false)
        return [.selfFence(lease: tenure.lease, reason: reason)]
    }

    private mutating func register(now: Instant) -> [Directive] {
        state = .registering(sentAt: now)
        return [.register(ttlSeconds: timers.ttlSeconds, sentAt: now, fenced: unreportedFence)]
    }
}

extension Duration {
    /// `1.5 s`, `0.25 s`, `3 s`: a duration to the millisecond as a person reads it.
    var readableSeconds: String {
        let ms = components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000
        var text = "\(abs(ms) / 1000)"
        if abs(ms) % 1000 != 0 {
            var digits = String(abs(ms) % 1000 + 1000).dropFirst()
            while digits.hasSuffix("0") { digits = digits.dropLast() }
            text += "." + digits
        }
        return (ms < 0 ? "-" : "") + text + " s"
    }
}
