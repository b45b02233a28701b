/// Who holds a cluster network's gateway address (`.1`) when several nodes serve the
/// network. Each hosting node has an address of its own; the gateway address is held by
/// exactly one of them at a time: the node whose name is in the cluster's gateway key,
/// which is written only if absent and lives under the writer's node lease. When the
/// holder dies its lease expires, the key goes with it, and the next hosting node to ask
/// takes it. The primary-backup gateway with NAT builds on this election.
public enum GatewayElection {
    /// What a node does about one cluster's gateway address.
    public enum Action: Sendable, Equatable {
        /// The network is served by one node without an underlay: that node's own address
        /// is the gateway, and there is nothing to elect.
        case none
        /// Nobody holds it and this node hosts the network: claim the key, and on success
        /// put the address on the bridge.
        case campaign
        /// This node holds the key: keep the address on the bridge.
        case hold
        /// This node holds the key but hosts no VM of the cluster any more: delete the key
        /// (only if it is still this node's) and take the address off.
        case resign
        /// Another node holds it, or nobody does and this node does not host the network,
        /// or this node has no lease (it cannot tell who holds it): take the address off
        /// the bridge if it is there.
        case release
    }

    /// - Parameters:
    ///   - hosting: whether one of the cluster's VMs is placed on `node`.
    ///   - holder: the node named in the cluster's gateway key, nil when there is none.
    ///   - leaseHeld: whether `node` holds its node lease now. Without one the key it may
    ///     still name is about to expire, and another node may take it meanwhile.
    public static func decide(
        network: ClusterNetwork, node: String, hosting: Bool, holder: String?, leaseHeld: Bool
    ) -> Action {
        guard !network.nodeAddresses.isEmpty else { return .none }
        guard leaseHeld else { return .release }
        switch holder {
        case node?: return hosting ? .hold : .resign
        case nil: return hosting ? .campaign : .release
        default: return .release
        }
    }
}
