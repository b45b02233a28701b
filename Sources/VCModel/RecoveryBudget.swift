/// The arithmetic behind `vc explain timers`: from the configured timers, how long after a
/// node dies its VMs can take at worst to run elsewhere, term by term, once when etcd's
/// leader survives and once when it died with the node; and how early a node cut off
/// from etcd stops its own VMs. The command gathers the values; this adds them up.
///
/// The etcd terms follow etcd 3.4's code and what was measured on three namespace members
/// (`shared/notes/multinode.md`): a dead holder is seen about TTL + 0.45 s after its last
/// renewal, and TTL + 2.0 to 3.2 s after its death when etcd's leader died too, at a 1 s
/// election timeout.
public struct RecoveryBudget: Codable, Sendable, Equatable {
    /// How a live node learns that a node's registration is gone.
    public enum Notice: String, Codable, Sendable, Equatable, CaseIterable {
        /// At its next reconcile pass, every `reconcileIntervalSeconds`.
        case reconcile
        /// By reading the registrations every `pollMilliseconds` (vcd's node-loss loop,
        /// beside the reconcile passes): what vcd does today.
        case poll
        /// At once, through an etcd watch on the registrations.
        case watch
    }

    /// The values the budget is computed from.
    public struct Settings: Codable, Sendable, Equatable {
        /// vcd's `leaseTTLSeconds`: what it asks of etcd.
        public var leaseTTLSeconds: Int
        /// From one renewal to the next; nil for a third of the TTL, as vcd renews.
        public var renewalPeriodMilliseconds: Int?
        /// How long before its lease can expire a node that cannot renew it self-fences.
        public var selfFenceMarginMilliseconds: Int
        /// etcd's `--heartbeat-interval`.
        public var etcdHeartbeatMilliseconds: Int
        /// etcd's `--election-timeout`.
        public var etcdElectionTimeoutMilliseconds: Int
        /// vcd's `reconcileIntervalSeconds`.
        public var reconcileIntervalSeconds: Int
        public var notice: Notice
        /// Estimate: fencing the dead node at the storage target.
        public var fencingMilliseconds: Int
        /// Estimate: placing its VMs anew and starting them on live nodes.
        public var restartMilliseconds: Int

        public init(
            leaseTTLSeconds: Int, renewalPeriodMilliseconds: Int? = nil,
            selfFenceMarginMilliseconds: Int = Self.defaultMarginMilliseconds, etcdHeartbeatMilliseconds: Int,
            etcdElectionTimeoutMilliseconds: Int, reconcileIntervalSeconds: Int, notice: Notice = .poll,
            fencingMilliseconds: Int = Self.defaultFencingMilliseconds,
            restartMilliseconds: Int = Self.defaultRestartMilliseconds
        ) {
            self.leaseTTLSeconds = leaseTTLSeconds
            self.renewalPeriodMilliseconds = renewalPeriodMilliseconds
            self.selfFenceMarginMilliseconds = selfFenceMarginMilliseconds
            self.etcdHeartbeatMilliseconds = etcdHeartbeatMilliseconds
            self.etcdElectionTimeoutMilliseconds = etcdElectionTimeoutMilliseconds
            self.reconcileIntervalSeconds = reconcileIntervalSeconds
            self.notice = notice
            self.fencingMilliseconds = fencingMilliseconds
            self.restartMilliseconds = restartMilliseconds
        }

        public static let defaultMarginMilliseconds = Int(LeaseMachine.Timers.defaultMargin.components.seconds * 1000)
        /// Unbinding a name and dropping its session at tgtd took effect at once on the
        /// testbed drill; the listing is polled until it shows none.
        public static let defaultFencingMilliseconds = 500
        /// A restore onto another node took 0.54 s, a TCG `virsh start` about as long.
        public static let defaultRestartMilliseconds = 1000

        /// vcd's own defaults (`DaemonConfiguration`) with etcd's (100 ms heartbeat, 1 s
        /// election timeout: `scripts/daemons.sh` starts etcd without timer flags).
        public static let daemonDefaults = Settings(
            leaseTTLSeconds: 10, etcdHeartbeatMilliseconds: 100, etcdElectionTimeoutMilliseconds: 1000,
            reconcileIntervalSeconds: 15)

        /// What `scripts/testbed.sh` configures: vcd at a 3 s TTL and a 5 s reconcile
        /// interval, etcd at 200/2000 ms.
        public static let testbed = Settings(
            leaseTTLSeconds: 3, etcdHeartbeatMilliseconds: 200, etcdElectionTimeoutMilliseconds: 2000,
            reconcileIntervalSeconds: 5)
    }

    /// One addend: a stable `name` for scripts, a `label` and the reason for people.
    public struct Term: Codable, Sendable, Equatable {
        public var name: String
        public var label: String
        public var milliseconds: Int
        public var why: String

        public init(name: String, label: String, milliseconds: Int, why: String) {
            self.name = name
            self.label = label
            self.milliseconds = milliseconds
            self.why = why
        }
    }

    /// The node's own side: when it gives up a lease it cannot renew.
    public struct SelfFence: Codable, Sendable, Equatable {
        /// From the send time of its last renewal that succeeded to its self-fence.
        public var afterMilliseconds: Int
        /// How much earlier than the lease can expire on etcd's side.
        public var marginMilliseconds: Int
        /// Renewals it sends on schedule before that point (retries of failed ones aside).
        public var renewalsBeforeFence: Int
        /// The longest systemd `WatchdogSec` that still backs the self-fence: a vcd that
        /// hangs right after a ping (at most a renewal period after its last renewal) is
        /// killed, its VMs with it, before its self-fence point
        /// (``LeaseMachine/watchdogMayPing``).
        public var watchdogAtMostMilliseconds: Int
    }

    public var settings: Settings
    /// etcd's smallest lease: ceil(1.5 × election timeout), counted in heartbeats.
    public var minimumTTLSeconds: Int
    /// What etcd grants: the asked TTL, raised silently to its minimum.
    public var grantedTTLSeconds: Int
    public var renewalPeriodMilliseconds: Int
    /// The node dies, etcd's leader does not: from the death to its VMs running elsewhere.
    public var terms: [Term]
    /// Added to ``terms`` when etcd's leader died with the node.
    public var leaderLossTerms: [Term]
    public var worstCaseMilliseconds: Int
    public var worstCaseLeaderLostMilliseconds: Int
    public var selfFence: SelfFence

    /// etcd's lessor looks for expired leases every 500 ms (`lease/lessor.go`, runLoop).
    public static let expiryScanMilliseconds = 500
    /// How often vcd's node-loss loop reads the registrations (`NodeLossRecovery.period`).
    public static let pollMilliseconds = 500

    public init(_ settings: Settings) throws(ModelError) {
        let s = settings
        guard s.etcdHeartbeatMilliseconds > 0 else {
            throw .invalidTimers(
                setting: "an etcd heartbeat of \(s.etcdHeartbeatMilliseconds) ms", reason: "it must be positive")
        }
        guard s.etcdElectionTimeoutMilliseconds >= 5 * s.etcdHeartbeatMilliseconds else {
            throw .invalidTimers(
                setting: "an etcd election timeout of \(s.etcdElectionTimeoutMilliseconds) ms",
                reason: "etcd wants at least 5 heartbeats (\(5 * s.etcdHeartbeatMilliseconds) ms) and refuses to start")
        }
        if s.notice == .reconcile && s.reconcileIntervalSeconds <= 0 {
            throw .invalidTimers(
                setting: "reconcileIntervalSeconds \(s.reconcileIntervalSeconds)",
                reason: "the reconciler then runs only at start and never notices a dead node")
        }
        guard s.fencingMilliseconds >= 0, s.restartMilliseconds >= 0 else {
            throw .invalidTimers(setting: "a negative estimate", reason: "fencing and restart take 0 ms or more")
        }
        let timers = try LeaseMachine.Timers(
            ttlSeconds: s.leaseTTLSeconds, renewalPeriod: s.renewalPeriodMilliseconds.map { .milliseconds($0) },
            margin: .milliseconds(s.selfFenceMarginMilliseconds))

        self.settings = s
        minimumTTLSeconds = Self.minimumTTLSeconds(
            heartbeatMilliseconds: s.etcdHeartbeatMilliseconds,
            electionTimeoutMilliseconds: s.etcdElectionTimeoutMilliseconds)
        grantedTTLSeconds = max(s.leaseTTLSeconds, minimumTTLSeconds)
        renewalPeriodMilliseconds = Self.milliseconds(timers.renewalPeriod)
        let election = s.etcdElectionTimeoutMilliseconds
        let raised =
            grantedTTLSeconds > s.leaseTTLSeconds
            ? "leaseTTLSeconds \(s.leaseTTLSeconds), raised by etcd to its minimum \(minimumTTLSeconds) s"
            : "leaseTTLSeconds \(s.leaseTTLSeconds)"
        let notice: Term =
            switch s.notice {
            case .reconcile:
                Term(
                    name: "notice", label: "noticed", milliseconds: s.reconcileIntervalSeconds * 1000,
                    why:
                        "a live node sees the registration gone at its next reconcile pass (reconcileIntervalSeconds \(s.reconcileIntervalSeconds))"
                )
            case .poll:
                Term(
                    name: "notice", label: "noticed", milliseconds: Self.pollMilliseconds,
                    why: "a live node reads the registrations every \(Self.pollMilliseconds) ms")
            case .watch:
                Term(
                    name: "notice", label: "noticed", milliseconds: 0,
                    why: "a live node's watch sees the delete at once (under 1 ms measured)")
            }
        terms = [
            Term(
                name: "leaseTTL", label: "lease TTL", milliseconds: grantedTTLSeconds * 1000,
                why: "the node died just after a renewal: etcd keeps its lease a full TTL (\(raised))"),
            Term(
                name: "expiryScan", label: "expiry scan", milliseconds: Self.expiryScanMilliseconds,
                why: "etcd looks for expired leases every 0.5 s, then deletes the registration"),
            notice,
            Term(
                name: "fencing", label: "fencing", milliseconds: s.fencingMilliseconds,
                why: "its initiator names unbound at tgtd and their sessions dropped until none is listed (estimate)"),
            Term(
                name: "restart", label: "restart", milliseconds: s.restartMilliseconds,
                why: "its VMs placed anew and started from their own disks on live nodes (estimate)"),
        ]
        leaderLossTerms = [
            Term(
                name: "leaderElection", label: "etcd leader election", milliseconds: 2 * election,
                why:
                    "the other members wait a randomised election timeout, up to twice --election-timeout (\(election) ms), after the last heartbeat"
            ),
            Term(
                name: "leaseExtension", label: "lease extension", milliseconds: election,
                why:
                    "the new leader gives every lease its full TTL again plus one election timeout, whenever its last renewal was"
            ),
        ]
        worstCaseMilliseconds = terms.map(\.milliseconds).reduce(0, +)
        worstCaseLeaderLostMilliseconds = worstCaseMilliseconds + leaderLossTerms.map(\.milliseconds).reduce(0, +)
        let after = grantedTTLSeconds * 1000 - s.selfFenceMarginMilliseconds
        selfFence = SelfFence(
            afterMilliseconds: after, marginMilliseconds: s.selfFenceMarginMilliseconds,
            renewalsBeforeFence: (after - 1) / renewalPeriodMilliseconds,
            watchdogAtMostMilliseconds: after - renewalPeriodMilliseconds)
    }

    /// etcd 3.4 (`etcdserver/server.go`): ElectionTicks = election / heartbeat, the
    /// smallest TTL is 3 × ElectionTicks / 2 heartbeats, rounded up to whole seconds.
    public static func minimumTTLSeconds(heartbeatMilliseconds: Int, electionTimeoutMilliseconds: Int) -> Int {
        let ticks = electionTimeoutMilliseconds / heartbeatMilliseconds
        let milliseconds = (3 * ticks / 2) * heartbeatMilliseconds
        return (milliseconds + 999) / 1000
    }

    public static func milliseconds(_ d: Duration) -> Int {
        Int(d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000)
    }
}
