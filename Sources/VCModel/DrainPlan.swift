/// What emptying one node (`vcnode drain`) does to each cluster with VMs placed there,
/// decided before anything moves, so that a drain that cannot complete changes nothing.
///
/// Clusters are taken in name order. A running one has its VMs on the node moved live to
/// where placement puts them, with the memory of every cluster moved before it counted on
/// its new nodes. A suspended one runs nowhere and is left as it is (its resume places it
/// on ready nodes). A cluster whose VMs fit nowhere else refuses the drain, or with
/// `force` is suspended (memory to the storage node), as the plan says. A cluster in any
/// other state (an operation in progress, or failed) refuses it until it is settled.
public enum DrainPlan {
    public enum Action: Sendable, Equatable {
        /// Move these VMs of the cluster off the node while they run.
        case migrate(cluster: String, vms: [String])
        /// Suspend the cluster: its VMs fit on no other node (`reason`).
        case suspend(cluster: String, reason: String)
    }

    public struct Refusal: Error, Sendable, Equatable, CustomStringConvertible {
        public var cluster: String
        public var reason: String
        public var description: String { reason }
    }

    /// The actions, in order, or why the drain cannot go ahead.
    ///
    /// - Parameters:
    ///   - nodes: every node as placement sees it, with the draining node already cordoned
    ///     (or dead) so that nothing is placed on it.
    ///   - busy: clusters an operation holds now.
    public static func plan(
        node: String, clusters: [VirtualCluster], nodes: [NodeView], busy: Set<String>, force: Bool
    ) -> Result<[Action], Refusal> {
        var ledger = Ledger(clusters: clusters)
        var actions: [Action] = []
        for cluster in clusters.sorted(by: { $0.name < $1.name }) {
            let here = cluster.vms.filter { $0.node == node }.map(\.name)
            guard !here.isEmpty else { continue }
            if busy.contains(cluster.name) {
                return .failure(
                    Refusal(
                        cluster: cluster.name,
                        reason:
                            "cluster '\(cluster.name)' has an operation in progress; drain \(node) again when it ends"))
            }
            switch cluster.state {
            case .suspended:
                continue
            case .running:
                break
            case .failed:
                return .failure(
                    Refusal(
                        cluster: cluster.name,
                        reason:
                            "cluster '\(cluster.name)' is failed, with VMs placed on \(node); resume or destroy it first"
                    ))
            case .creating, .resuming, .suspending, .destroying:
                return .failure(
                    Refusal(
                        cluster: cluster.name,
                        reason:
                            "cluster '\(cluster.name)' is \(cluster.state.rawValue); drain \(node) again when it ends"))
            }
            let keep = Dictionary(
                cluster.vms.filter { $0.node != node }.map { ($0.name, $0.node) }, uniquingKeysWith: { a, _ in a })
            // A pin to the draining node cannot hold any more: the moved VMs go anywhere.
            var request = PlacementRequest(spec: cluster.spec, keep: keep)
            if request.pin == node { request.pin = nil }
            do {
                let placed = try Placement.place(request, on: ledger.views(nodes, excluding: cluster.name))
                ledger.move(cluster, to: placed)
                actions.append(.migrate(cluster: cluster.name, vms: here))
            } catch {
                let reason =
                    "\(here.joined(separator: ", ")) of cluster '\(cluster.name)' fit on no other node: \(error)"
                guard force else {
                    return .failure(
                        Refusal(
                            cluster: cluster.name,
                            reason: "\(reason); drain with --force to suspend the cluster instead"))
                }
                ledger.suspend(cluster)
                actions.append(.suspend(cluster: cluster.name, reason: reason))
            }
        }
        return .success(actions)
    }

    /// What every cluster commits per node as the plan goes on.
    struct Ledger {
        var memory: [String: [String: Int]] = [:]  // cluster → node → MiB
        var count: [String: [String: Int]] = [:]

        init(clusters: [VirtualCluster]) {
            for cluster in clusters where CommitmentLedger.commits(cluster.state) {
                for vm in cluster.vms {
                    memory[cluster.name, default: [:]][vm.node, default: 0] += cluster.spec.memoryMiB
                    count[cluster.name, default: [:]][vm.node, default: 0] += 1
                }
            }
        }

        func views(_ nodes: [NodeView], excluding cluster: String) -> [NodeView] {
            nodes.map { view in
                var v = view
                v.committedMiB = memory.filter { $0.key != cluster }.values.reduce(0) { $0 + ($1[view.name] ?? 0) }
                v.vmCount = count.filter { $0.key != cluster }.values.reduce(0) { $0 + ($1[view.name] ?? 0) }
                return v
            }
        }

        mutating func move(_ cluster: VirtualCluster, to placed: [String: String]) {
            memory[cluster.name] = placed.values.reduce(into: [:]) { $0[$1, default: 0] += cluster.spec.memoryMiB }
            count[cluster.name] = placed.values.reduce(into: [:]) { $0[$1, default: 0] += 1 }
        }

        mutating func suspend(_ cluster: VirtualCluster) {
            memory[cluster.name] = nil
            count[cluster.name] = nil
        }
    }
}
