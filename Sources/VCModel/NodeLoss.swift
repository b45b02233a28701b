import Foundation

/// What the live nodes do about a node whose lease is gone, decided from the catalog alone.
///
/// Order, and why: a dead node's QEMUs may still be writing (a node cut off from etcd runs
/// on until it self-fences, and one that cannot even do that keeps its sessions), so its
/// incarnations are first **fenced** at the storage (their initiator names unbound and
/// their sessions dropped at tgtd, then checked gone). Only then are its VMs **recovered**:
/// placed on live nodes with a new generation (so a new initiator name, never admitted
/// before) and started from the same disks. A fenced name is recorded for good, so that
/// nothing (a reconciler, an export, the node itself when it comes back) admits it again.
public enum NodeLoss {
    /// The incarnations fenced on one node, kept in the catalog for good.
    public struct Fenced: Codable, Sendable, Equatable {
        public var node: String
        /// The initiator names unbound and cut off at the storage.
        public var initiators: Set<String>
        /// The node that fenced them last, and when.
        public var by: String
        public var at: Date

        public init(node: String, initiators: Set<String>, by: String, at: Date) {
            self.node = node
            self.initiators = initiators
            self.by = by
            self.at = at
        }
    }

    /// A dead node whose current incarnations must be fenced before anything of theirs
    /// runs elsewhere.
    public struct Fence: Sendable, Equatable {
        public var node: String
        /// Sorted, so that two nodes computing it agree.
        public var initiators: [String]
    }

    /// A cluster whose VMs on dead nodes are all fenced: its recovery may start.
    public struct Recovery: Sendable, Equatable {
        public var cluster: String
        /// The VMs to place again, sorted.
        public var vms: [String]
    }

    /// What to do now, given every cluster, the nodes that hold a lease, the clusters an
    /// operation owns and what was fenced already.
    ///
    /// - A VM's incarnation needs fencing when it is placed on a node that holds no lease
    ///   and its cluster is not suspended (a suspended VM runs nowhere, and its next
    ///   incarnation has a new name anyway), even while an operation owns the cluster: that
    ///   operation is taken over by a live node, which may start nothing of it meanwhile.
    /// - A cluster is recovered when it is running, no operation owns it, and it has a
    ///   fenced incarnation still placed: on a dead node, or on a node that came back
    ///   (which must not start that incarnation again). A failed cluster is left to its
    ///   administrator: its resume places the fenced VMs anew.
    /// - A migrating VM (`origins` of a migration in progress) whose origin node holds no
    ///   lease has its incarnation there fenced too: it is still admitted, and its QEMU
    ///   may still write, until the migration is settled.
    public static func plan(
        clusters: [VirtualCluster], live: Set<String>, busy: Set<String>, fenced: [String: Fenced],
        migrations: [ClusterOperation] = []
    ) -> (fences: [Fence], recoveries: [Recovery]) {
        var toFence: [String: Set<String>] = [:]
        var recoveries: [Recovery] = []
        for operation in migrations where operation.kind == .migrate {
            for (vm, origin) in operation.origins ?? [:] where !live.contains(origin.node) {
                let name = origin.initiator(vm: vm)
                if !(fenced[origin.node]?.initiators.contains(name) ?? false) {
                    toFence[origin.node, default: []].insert(name)
                }
            }
        }
        for cluster in clusters.sorted(by: { $0.name < $1.name }) where cluster.state != .suspended {
            var waiting = false
            var moved: [String] = []
            for vm in cluster.vms {
                let isFenced = fenced[vm.node]?.initiators.contains(vm.initiator) ?? false
                if isFenced {
                    moved.append(vm.name)
                } else if !live.contains(vm.node) {
                    toFence[vm.node, default: []].insert(vm.initiator)
                    waiting = true
                }
            }
            if cluster.state == .running && !busy.contains(cluster.name) && !waiting && !moved.isEmpty {
                recoveries.append(Recovery(cluster: cluster.name, vms: moved.sorted()))
            }
        }
        let fences = toFence.keys.sorted().map { Fence(node: $0, initiators: toFence[$0]!.sorted()) }
        return (fences, recoveries)
    }

    /// Every fenced initiator name, whatever its node: what no export and no start may
    /// admit again.
    public static func names(_ fenced: [String: Fenced]) -> Set<String> {
        fenced.values.reduce(into: Set<String>()) { $0.formUnion($1.initiators) }
    }
}
