/// Whether a node whose lease ran out stops its VMs: only when another node may start
/// them elsewhere. A node cannot tell by itself whether it is cut off from a quorum that
/// the others still have, or whether etcd has no quorum at all (then nobody can fence or
/// move anything, and stopping the VMs would only lose them), nor whether a renewal that
/// is merely slow has kept its lease. The other nodes' vcds can: each asks etcd how long
/// this node's lease has left (etcd's `TimeToLive`, as its leader counts it).
///
/// Others start this node's VMs only after its lease has expired on etcd's side, they
/// noticed, fenced the node at the storage and started the VMs: over a second after the
/// expiry. So the VMs stop when a witness reports at most `stopAtSecondsLeft` left (or
/// none), and keep running while one reports more; asked again every few hundred ms.
public enum SelfFence {
    /// etcd rounds the time left up to whole seconds: 1 means at most one second.
    public static let stopAtSecondsLeft = 1

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
        let known = answers.compactMap { if case .left(let s) = $0 { s } else { nil } }
        if let least = known.min(), least <= stopAtSecondsLeft {
            return .stop(
                least < 0
                    ? "its lease has expired (as another node's etcd member says)"
                    : "its lease has at most \(least) s left (as another node's etcd member says)")
        }
        if let most = known.max() {
            return .keepRunning("its lease still has \(most) s left (as another node's etcd member says)")
        }
        if answers.allSatisfy({ $0 == .silent }) {
            return .stop("no other node answers: this node may be the one cut off")
        }
        return .keepRunning("the other nodes cannot read etcd either: no quorum anywhere, nobody can take over")
    }
}
