/// Whether a node may be taken out of the cluster (`vcnode remove`), decided from the
/// catalog and etcd's member list before anything changes, so that a refused removal
/// changes nothing.
///
/// A node may go when nothing runs there and nothing will: it is dead, or alive and
/// cordoned (drained); no VM of a running, failed or busy cluster is placed on it (a
/// suspended cluster runs nowhere: its resume places it on ready nodes); and no operation
/// is coordinated by it. Its etcd member, when it has one, is removed first, and only if
/// the voting members left keep a quorum of healthy ones: etcd's own check would refuse it
/// later, with a message about raft.
public enum NodeRemoval {
    /// One etcd member as the removal sees it.
    public struct Member: Sendable, Equatable {
        public var id: UInt64
        public var name: String
        /// A learner does not vote: removing it never costs quorum.
        public var isLearner: Bool
        /// It answered a status request just now.
        public var healthy: Bool

        public init(id: UInt64, name: String, isLearner: Bool = false, healthy: Bool) {
            self.id = id
            self.name = name
            self.isLearner = isLearner
            self.healthy = healthy
        }
    }

    /// What the removal does, in order.
    public struct Plan: Sendable, Equatable {
        /// The node's etcd member, removed first; nil when it has none.
        public var member: Member?
        /// Voting members after the removal, and how many of them are healthy.
        public var votersLeft: Int
        public var healthyVotersLeft: Int
    }

    public struct Refusal: Error, Sendable, Equatable, CustomStringConvertible {
        public var reason: String
        public var description: String { reason }
    }

    /// The plan, or why the node cannot be removed now.
    ///
    /// - Parameters:
    ///   - state: the node's state, nil when the catalog does not know it.
    ///   - known: every node the catalog knows, for the error about an unknown name.
    ///   - busy: clusters an operation holds now.
    ///   - coordinating: clusters whose operation the node coordinates.
    ///   - migratingFrom: clusters whose migration in progress moves VMs off the node (their
    ///     records place them on the destination already).
    ///   - members: etcd's member list, each with its health; the node's member is the
    ///     one with its name.
    ///   - storage: whether the node has the storage role; `images` are the golden images
    ///     the catalog knows (they are on the storage node, as every cluster's disks).
    public static func plan(
        node: String, state: NodeState?, known: [String], clusters: [ClusterSummary], busy: Set<String>,
        coordinating: [String], migratingFrom: [String] = [], members: [Member], storage: Bool = false,
        images: [String] = []
    ) -> Result<Plan, Refusal> {
        guard let state else {
            let names = known.sorted().joined(separator: ", ")
            return .failure(Refusal(reason: "no node named '\(node)'; known nodes: \(names.isEmpty ? "none" : names)"))
        }
        if storage && !(clusters.isEmpty && images.isEmpty) {
            return .failure(
                Refusal(
                    reason:
                        "node \(node) is the storage node and holds the disks of \(clusters.count) cluster(s) and "
                        + "\(images.count) image(s); destroy and delete them first"))
        }
        if state == .ready {
            return .failure(
                Refusal(reason: "node \(node) is ready and takes new VMs; drain it first (vcnode drain \(node))"))
        }
        if let cluster = coordinating.sorted().first {
            return .failure(
                Refusal(
                    reason:
                        "node \(node) coordinates an operation on cluster '\(cluster)'; remove it when that ends"))
        }
        if let cluster = migratingFrom.sorted().first {
            return .failure(
                Refusal(
                    reason:
                        "VMs of cluster '\(cluster)' are moving off \(node) (a drain in progress); remove it when that ends"
                ))
        }
        var placed: [String] = []
        for cluster in clusters.sorted(by: { $0.spec.name < $1.spec.name }) where cluster.state != .suspended {
            let here = cluster.vms.filter { $0.node == node }.map(\.name)
            guard !here.isEmpty else { continue }
            if busy.contains(cluster.spec.name) {
                return .failure(
                    Refusal(
                        reason:
                            "cluster '\(cluster.spec.name)' has an operation in progress with VMs on \(node); "
                            + "remove \(node) when it ends"))
            }
            placed += here
        }
        if !placed.isEmpty {
            let advice =
                state == .dead
                ? "they are started elsewhere when there is room (see vc cluster show), or destroy their clusters"
                : "drain it first (vcnode drain \(node))"
            return .failure(
                Refusal(
                    reason:
                        "node \(node) still has \(placed.count) VM(s) placed on it (\(placed.joined(separator: ", "))); "
                        + advice))
        }
        let voters = members.filter { !$0.isLearner }
        let own = members.first { $0.name == node }
        var votersLeft = voters.count
        var healthyLeft = voters.filter(\.healthy).count
        if let own, !own.isLearner {
            votersLeft -= 1
            if own.healthy { healthyLeft -= 1 }
            if votersLeft == 0 {
                return .failure(
                    Refusal(reason: "node \(node) holds etcd's only voting member; the catalog would be gone with it"))
            }
            let quorum = votersLeft / 2 + 1
            if healthyLeft < quorum {
                let sick = voters.filter { !$0.healthy && $0.name != node }.map(\.name).sorted()
                return .failure(
                    Refusal(
                        reason:
                            "removing \(node)'s etcd member would leave \(healthyLeft) healthy of \(votersLeft) "
                            + "voting members, below a quorum of \(quorum); bring "
                            + "\(sick.isEmpty ? "a member" : sick.joined(separator: ", ")) back or remove it first"))
            }
        }
        return .success(Plan(member: own, votersLeft: votersLeft, healthyVotersLeft: healthyLeft))
    }
}
