/// Whether a node whose lease ran out stops its VMs: only when another node may start
/// them elsewhere. A node cannot tell by itself whether it is cut off from a quorum that
/// the others still have, or whether etcd has no quorum at all (then nobody can fence or
/// move anything, and stopping the VMs would only lose them), nor whether a renewal that
/// is merely slow has kept its lease. The other nodes' vcds can: each asks etcd how long
/// this node's lease has left (etcd's `TimeToLive`, as its leader counts it).
///
/// Others start this node's VMs only after its lease has expired on etcd's side, they
/// noticed (within half a second), fenced the node at the storage and placed, exported,
/// checked, defined and started the VMs: well over a second after the expiry (the testbed
/// measured about two). So the VMs stop when a witness reports the lease expired, and keep
/// running while one reports time left; this node asks every quarter second. Stopping
/// earlier, at one second left, stopped healthy nodes whose renewals were late during an
/// etcd election and came back a moment later.
public enum SelfFence {
    /// etcd rounds the time left up to whole seconds, and says -1 once the lease is gone
    /// (revoked by its expiry scan, every half second, which also deletes the node's
    /// registration: the instant the others notice it). Only that stops the VMs: answers
    /// of 0 came from leases that lived on.
    public static let stopAtSecondsLeft = -1
    /// At and above this many seconds "left", a lease has no expiry on the member that
    /// answered (etcd reports `Int64.max` nanoseconds): not an answer.
    public static let forever = 1 << 30

    /// What one other node's vcd answered.
    public enum Answer: Sendable, Equatable {
        /// It did not answer in time.
        case silent
        /// It answered, but etcd did not answer it in time.
        case unknown
        /// etcd told it the lease has this many seconds left (rounded up); -1: expired.
        case left(seconds: Int)
    }

    public enum Verdict: Sendable, Equatable {
        /// Stop every VM now, for this reason.
        case stop(String)
        /// Keep them running, for this reason; ask again later.
        case keepRunning(String)
    }

    /// - Parameter answers: one per other node that ever registered.
    public static func decide(answers: [Answer]) -> Verdict {
        guard !answers.isEmpty else { return .keepRunning("no other node could take its VMs over") }
        // A member that is not (or no longer, or not yet) the leader keeps leases without
        // an expiry and reports them as lasting for ever: that says nothing.
        let known = answers.compactMap { if case .left(let s) = $0, s < Self.forever { s } else { nil } }
        if let most = known.max(), most > stopAtSecondsLeft {
            return .keepRunning("its lease still has \(most) s left (as another node's etcd member says)")
        }
        if !known.isEmpty {
            // Every node that could ask etcd says so: one glimpse of an election is not enough.
            return .stop("its lease has expired (as every other node that could ask etcd says)")
        }
        if answers.allSatisfy({ $0 == .silent }) {
            return .stop("no other node answers: this node may be the one cut off")
        }
        return .keepRunning("the other nodes cannot read etcd either: no quorum anywhere, nobody can take over")
    }
}
