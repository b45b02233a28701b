/// The node lease as a state machine: it decides when to register, renew, give up the
/// node's roles, ask the other nodes and self-fence, and the shell (`NodeLease` in
/// VCDaemon) only carries its directives out and reports what etcd and the other nodes
/// answered. It never reads a clock: every event carries `now`, taken by the shell from
/// `ContinuousClock` (CLOCK_BOOTTIME on Linux, so a host that was suspended sees the time
/// that passed meanwhile, as etcd's members did).
///
/// What etcd promises (`shared/notes/multinode.md`): a TTL is a minimum. The lease cannot
/// expire on etcd's side before `send time of the last renewal that succeeded + the TTL
/// etcd granted`, because etcd took that renewal no earlier than it was sent; it may well
/// live longer (the expiry scan runs every 0.5 s, and a new etcd leader gives every lease
/// its full TTL again plus an election timeout). So the node counts from the send time,
/// never from the reply, never from what etcd reports after a leader change.
///
/// A margin before that instant (the self-fence point) the node *lapses*: it acts under
/// the lease no more (no key written under it, gateway addresses off). Its VMs keep
/// running until the other nodes say the lease is gone (``SelfFence``): they start the
/// VMs elsewhere only after that, and a node that stopped its VMs at every late renewal
/// would stop healthy VMs at each etcd election, or lose them all when etcd has no quorum
/// anywhere (nobody can take them over then). While lapsed it keeps renewing: a renewal
/// that succeeds proves the lease never expired, so nobody moved its VMs, and the node
/// holds the lease again. etcd saying the lease is gone, or the other nodes saying so,
/// makes it self-fence: every VM destroyed. The witnesses are asked from the moment a
/// renewal is late, so that a node cut off from everyone stops right at its lapse.
///
/// After a self-fence the node never acts under that lease again: replies about it are
/// ignored, ``lease(at:)`` no longer returns it, and the registration that follows first
/// revokes it, so that the others see the node's incarnations gone and place its VMs anew
/// (with a new generation) rather than wait for them.
public struct LeaseMachine: Sendable, Equatable {
    public typealias Instant = ContinuousClock.Instant

    /// How long the lease lives, how often it is renewed, and how early the node gives up.
    public struct Timers: Sendable, Equatable {
        /// The TTL asked of etcd; etcd may grant more (its minimum is 1.5 × its election
        /// timeout), and the machine then counts with what it granted.
        public let ttlSeconds: Int
        /// From the send time of one renewal that succeeded to the next renewal.
        public let renewalPeriod: Duration
        /// The node lapses this long before its lease can expire on etcd's side. It covers
        /// taking every role's address off, the shell waking late on a loaded host, and
        /// clock rates.
        public let margin: Duration
        /// After a renewal that failed, the next one is sent this much later.
        public let retryDelay: Duration
        /// Between two questions to the other nodes about the lease (one at a time).
        public let askInterval: Duration

        /// One second: removing addresses took well under that on the testbed, and it
        /// leaves TTL − 1 s of renewals at the smallest TTL, 2 s.
        public static let defaultMargin = Duration.seconds(1)
        /// Renewals that fail quickly (a refused connection) are tried again this soon;
        /// one that hangs is bounded by its deadline anyway.
        public static let defaultRetryDelay = Duration.milliseconds(250)
        /// The others notice an expired lease within half a second (etcd's expiry scan)
        /// and need well over a second more to start its VMs: four questions a second
        /// stop them in time.
        public static let defaultAskInterval = Duration.milliseconds(250)
        /// A verdict of "stop" is acted on at the lapse when it is at most this old.
        public static let verdictShelfLife = Duration.milliseconds(1500)

        /// - Parameters:
        ///   - renewalPeriod: default a third of the TTL, as `etcdctl lease keep-alive`.
        ///   - retryDelay: default 250 ms, and never more than the renewal period.
        public init(
            ttlSeconds: Int, renewalPeriod: Duration? = nil, margin: Duration = Self.defaultMargin,
            retryDelay: Duration? = nil, askInterval: Duration = Self.defaultAskInterval
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
            guard askInterval > .zero else {
                throw .invalidTimers(
                    setting: "questions to the other nodes every \(askInterval.readableSeconds)",
                    reason: "it must be more than 0")
            }
            self.ttlSeconds = ttlSeconds
            self.renewalPeriod = period
            self.margin = margin
            self.retryDelay = retry
            self.askInterval = askInterval
        }
    }

    /// Why the node lapsed or self-fenced.
    public enum FenceReason: String, Sendable, Equatable, Codable {
        /// The self-fence point came and no renewal had succeeded since the one that set
        /// it: etcd is unreachable or too slow. In time: the lease lives at least `margin`
        /// longer.
        case notRenewedInTime
        /// The node noticed only after the instant its lease could have expired: it was
        /// paused (SIGSTOP, a frozen VM) or starved past its deadline. Another node may
        /// already run its VMs.
        case deadlinePassed
        /// etcd answered that the lease does not exist: it expired or was revoked.
        case leaseGone
        /// vcd is stopping while other nodes could take its VMs over: nothing may keep
        /// running under a lease nobody renews.
        case stopping
    }

    /// What the shell does next, in the order given.
    public enum Directive: Sendable, Equatable {
        /// Grant a lease of `ttlSeconds`, write the node's registration under it, then
        /// report ``granted(lease:ttlSeconds:sentAt:now:)`` or
        /// ``registrationFailed(sentAt:now:)`` with this `sentAt`. When `fenced` is set, the
        /// node self-fenced that lease: it is revoked first, and a registration whose
        /// revoke failed fails (reported so), because the registration key never went
        /// away and the others could not tell that the incarnations under it are gone.
        case register(ttlSeconds: Int, sentAt: Instant, fenced: Int64?)
        /// `lease` is held: work under it (registration, gateway keys and addresses,
        /// starting VMs) may go on until `until`, the self-fence point, and every etcd
        /// request made under it is bounded by that instant.
        case hold(lease: Int64, until: Instant)
        /// Send one keep-alive of `lease`, bounded by `deadline` (while the lease is held:
        /// the time left before it can have expired on etcd's side, less the margin), and
        /// report ``renewed(lease:ttlSeconds:sentAt:now:)`` or
        /// ``renewalFailed(lease:sentAt:now:)`` with this `sentAt`.
        case renew(lease: Int64, sentAt: Instant, deadline: Instant)
        /// Ask the other nodes how long etcd still gives `lease` (``SelfFence``) and report
        /// ``witnessed(lease:verdict:sentAt:now:)`` with this `sentAt`.
        case askWitnesses(lease: Int64, sentAt: Instant)
        /// Act under `lease` no more: take every gateway address and passive role off,
        /// write nothing more under it. The VMs keep running.
        case lapse(lease: Int64, reason: FenceReason)
        /// Stop every VM of this node now (virDomainDestroy, not a shutdown: a guest that
        /// takes its time to stop would run on while another node starts it), and, if
        /// not done yet, what ``lapse(lease:reason:)`` says. Report ``fenced(now:)`` once
        /// nothing runs any more; until then nothing is registered, and the watchdog is
        /// not pinged (``watchdogMayPing(now:interval:)``).
        case selfFence(lease: Int64, reason: FenceReason)
        /// Revoke `lease`, best effort: a lease this node no longer uses (stopped, or
        /// granted too late to be of use). A failure changes nothing: it expires.
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
        /// The send time of the question to the other nodes in flight, if one is.
        public fileprivate(set) var asking: Instant?
        /// When the next question may go out, if none is in flight.
        public fileprivate(set) var nextAsk: Instant?
        /// The last answer of the other nodes, and when it came.
        public fileprivate(set) var heard: Heard?
    }

    /// What the other nodes answered about the lease, and when.
    public struct Heard: Sendable, Equatable {
        public let verdict: SelfFence.Verdict
        public let at: Instant
    }

    public enum State: Sendable, Equatable {
        /// Not started.
        case idle
        /// A registration sent at `sentAt` is in flight.
        case registering(sentAt: Instant)
        /// The last registration failed; the next is due at `until`.
        case waiting(until: Instant)
        case holding(Tenure)
        /// Past the self-fence point: nothing is done under the lease, the VMs run on,
        /// renewals and questions to the other nodes go on.
        case lapsed(Tenure, reason: FenceReason)
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
    /// gone). The lease then lives at least until `sentAt` plus that TTL (never more than
    /// the granted one: etcd extends leases on a leader change); if that leaves time before
    /// the self-fence point, the node holds it (again, if it had lapsed). An answer about
    /// another lease or request is ignored.
    public mutating func renewed(lease: Int64, ttlSeconds: Int, sentAt: Instant, now: Instant) -> [Directive] {
        let lapsed: FenceReason?
        var tenure: Tenure
        switch state {
        case .holding(let t): (tenure, lapsed) = (t, nil)
        case .lapsed(let t, let reason): (tenure, lapsed) = (t, reason)
        default: return tick(now: now)
        }
        guard tenure.lease == lease, tenure.pending == sentAt else { return tick(now: now) }
        tenure.pending = nil
        guard ttlSeconds > 0 else { return fence(tenure, reason: .leaseGone) }
        let left = min(Duration.seconds(ttlSeconds), tenure.ttl)
        tenure.expiresAt = max(tenure.expiresAt, sentAt + left)
        // A period after the send time the deadline stands on: an answer that proved less
        // than an earlier one (a shorter TTL) has the next renewal come sooner.
        tenure.nextRenewal = max(tenure.expiresAt - tenure.ttl + timers.renewalPeriod, sentAt + timers.retryDelay)
        guard now < fencePoint(tenure) else {
            // Too late to be of use (a pause, a slow etcd): counted as lost.
            tenure.nextRenewal = max(tenure.nextRenewal, now + timers.retryDelay)
            state = lapsed.map { .lapsed(tenure, reason: $0) } ?? .holding(tenure)
            return tick(now: now)
        }
        tenure.asking = nil
        tenure.nextAsk = nil
        tenure.heard = nil
        state = .holding(tenure)
        return [.hold(lease: lease, until: fencePoint(tenure))] + tick(now: now)
    }

    /// The keep-alive sent at `sentAt` failed (no member answered, or not in time); the
    /// next one goes out after the retry delay.
    public mutating func renewalFailed(lease: Int64, sentAt: Instant, now: Instant) -> [Directive] {
        switch state {
        case .holding(var tenure) where tenure.lease == lease && tenure.pending == sentAt:
            tenure.pending = nil
            tenure.nextRenewal = now + timers.retryDelay
            state = .holding(tenure)
        case .lapsed(var tenure, let reason) where tenure.lease == lease && tenure.pending == sentAt:
            tenure.pending = nil
            tenure.nextRenewal = now + timers.retryDelay
            state = .lapsed(tenure, reason: reason)
        default:
            break
        }
        return tick(now: now)
    }

    /// The other nodes answered the question sent at `sentAt` about `lease`. Once the
    /// node has lapsed, "stop" self-fences it; while it holds the lease, the answer is kept
    /// (for at most ``Timers/verdictShelfLife``) so that the lapse acts on it at once.
    public mutating func witnessed(
        lease: Int64, verdict: SelfFence.Verdict, sentAt: Instant, now: Instant
    ) -> [Directive] {
        switch state {
        case .holding(var tenure) where tenure.lease == lease && tenure.asking == sentAt:
            tenure.asking = nil
            tenure.nextAsk = sentAt + timers.askInterval
            tenure.heard = Heard(verdict: verdict, at: now)
            state = .holding(tenure)
        case .lapsed(var tenure, let reason) where tenure.lease == lease && tenure.asking == sentAt:
            tenure.asking = nil
            tenure.nextAsk = sentAt + timers.askInterval
            tenure.heard = Heard(verdict: verdict, at: now)
            if case .stop = verdict { return fence(tenure, reason: reason) }
            state = .lapsed(tenure, reason: reason)
        default:
            break
        }
        return tick(now: now)
    }

    /// A live node that found this node lost (its registration gone from etcd) says so
    /// before it fences the node and starts its VMs elsewhere. Lapsed, the node believes
    /// it and self-fences at once; holding its lease, it cannot be lost (the lease lives at
    /// least until the self-fence point): the word is stale, and ignored.
    public mutating func toldLost(now: Instant) -> [Directive] {
        guard case .lapsed(let tenure, let reason) = state else { return tick(now: now) }
        return fence(tenure, reason: reason)
    }

    /// Time passed: renew when due, lapse at the self-fence point, ask the other nodes
    /// when a renewal is late, register again when due. The shell calls it at
    /// ``nextWake`` at the latest, and first thing after any pause it may have had.
    public mutating func tick(now: Instant) -> [Directive] {
        switch state {
        case .idle, .registering, .fencing, .stopped:
            return []
        case .waiting(let until):
            return now >= until ? register(now: now) : []
        case .holding(var tenure):
            if now >= fencePoint(tenure) {
                let reason: FenceReason = now >= tenure.expiresAt ? .deadlinePassed : .notRenewedInTime
                if let heard = tenure.heard, case .stop = heard.verdict, now - heard.at <= Timers.verdictShelfLife {
                    return [.lapse(lease: tenure.lease, reason: reason)] + fence(tenure, reason: reason)
                }
                state = .lapsed(tenure, reason: reason)
                return [.lapse(lease: tenure.lease, reason: reason)] + tick(now: now)
            }
            var directives: [Directive] = []
            if tenure.pending == nil, now >= tenure.nextRenewal {
                tenure.pending = now
                directives.append(.renew(lease: tenure.lease, sentAt: now, deadline: fencePoint(tenure)))
            }
            if let ask = askDue(tenure, now: now, late: true) {
                tenure.asking = now
                directives.append(ask)
            }
            state = .holding(tenure)
            return directives
        case .lapsed(var tenure, let reason):
            var directives: [Directive] = []
            if tenure.pending == nil, now >= tenure.nextRenewal {
                tenure.pending = now
                directives.append(.renew(lease: tenure.lease, sentAt: now, deadline: now + timers.renewalPeriod))
            }
            if let ask = askDue(tenure, now: now, late: false) {
                tenure.asking = now
                directives.append(ask)
            }
            state = .lapsed(tenure, reason: reason)
            return directives
        }
    }

    /// The self-fence is done: nothing of the fenced lease runs here any more. The node
    /// registers anew (revoking the fenced lease first); or, when vcd stops, it revokes
    /// the lease and stops.
    public mutating func fenced(now: Instant) -> [Directive] {
        guard case .fencing(let lease, let reason, let thenStop) = state else { return [] }
        if reason == .stopping || thenStop {
            state = .stopped
            return [.revoke(lease: lease)]
        }
        unreportedFence = lease
        return register(now: now)
    }

    /// vcd stops. When other nodes may take its VMs over (`othersMayTakeOver`), what runs
    /// under the lease is stopped first: a lease nobody renews lapses, and then the others
    /// start its VMs elsewhere. Otherwise (a single node) the VMs keep running, and the
    /// next vcd takes them up again. Then the lease is revoked.
    public mutating func stop(now: Instant, othersMayTakeOver: Bool) -> [Directive] {
        switch state {
        case .holding(let tenure), .lapsed(let tenure, _):
            if othersMayTakeOver { return fence(tenure, reason: .stopping) }
            state = .stopped
            return [.revoke(lease: tenure.lease)]
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

    /// The last answer of the other nodes while the lease is held or lapsed.
    public var verdict: SelfFence.Verdict? {
        switch state {
        case .holding(let tenure), .lapsed(let tenure, _): tenure.heard?.verdict
        default: nil
        }
    }

    /// When the shell must call ``tick(now:)`` next if no answer comes first; nil when only
    /// an answer (or ``fenced(now:)``) moves the machine on.
    public var nextWake: Instant? {
        switch state {
        case .idle, .registering, .fencing, .stopped: return nil
        case .waiting(let until): return until
        case .holding(let tenure):
            var wakes = [fencePoint(tenure)]
            if tenure.pending == nil { wakes.append(tenure.nextRenewal) }
            if tenure.asking == nil { wakes.append(max(askFrom(tenure), tenure.nextAsk ?? askFrom(tenure))) }
            return wakes.min()
        case .lapsed(let tenure, _):
            var wakes: [Instant] = []
            if tenure.pending == nil { wakes.append(tenure.nextRenewal) }
            if tenure.asking == nil { wakes.append(tenure.nextAsk ?? fencePoint(tenure)) }
            return wakes.min()
        }
    }

    /// Whether a systemd watchdog ping is safe: always but while a self-fence is under way
    /// (if it hangs, systemd's kill and `ExecStopPost` finish it) or after the stop. The
    /// watchdog backs the shell, not the lease: a vcd that hangs can no longer self-fence,
    /// and systemd kills it (and its VMs) within `WatchdogSec` of the last ping. Pinged
    /// while holding, that is before the lease can expire on etcd's side with the margin
    /// to spare when `WatchdogSec` is at most TTL − margin − renewal period (a vcd that
    /// hangs had renewed at most a period before; `vc explain timers` prints the bound).
    /// Pinged while lapsed too, because without etcd's quorum anywhere the VMs are to keep
    /// running, and the watchdog's kill would stop them.
    public var watchdogMayPing: Bool {
        switch state {
        case .idle, .registering, .waiting, .holding, .lapsed: true
        case .fencing, .stopped: false
        }
    }

    // MARK: - steps

    private func fencePoint(_ tenure: Tenure) -> Instant { tenure.expiresAt - timers.margin }

    /// From when the other nodes are asked while the lease is held: a renewal is a retry
    /// delay late (none succeeded a period plus a retry delay after the last that did).
    private func askFrom(_ tenure: Tenure) -> Instant {
        tenure.expiresAt - tenure.ttl + timers.renewalPeriod + timers.retryDelay
    }

    private func askDue(_ tenure: Tenure, now: Instant, late: Bool) -> Directive? {
        guard tenure.asking == nil, now >= (tenure.nextAsk ?? now) else { return nil }
        if late, now < askFrom(tenure) { return nil }
        return .askWitnesses(lease: tenure.lease, sentAt: now)
    }

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
