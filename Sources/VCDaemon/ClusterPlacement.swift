import VCCatalog
import VCModel

/// What one placement decision reads from the catalog, and how its outcome is guarded.
/// The commitment keys are read first: a create or resume that commits on a node after
/// that read changes the key's revision, so the transaction that records this decision
/// fails and the decision is made again from fresh numbers.
struct PlacementWorld: Sendable {
    var commitments: [String: Versioned<Int>]
    var live: [String: NodeRecord]
    var members: [NodeRecord]
    var cordons: [String: String]
    /// Summaries hold all that the promises depend on (state, memory, each VM's node).
    var clusters: [ClusterSummary]

    static func read(_ node: PeerNode) async throws -> PlacementWorld {
        let commitments = try await node.catalog.commitments()
        async let live = node.catalog.nodes()
        async let members = node.catalog.members()
        async let cordons = node.catalog.cordons()
        async let clusters = node.catalog.clusterSummaries()
        let records = try await live
        return PlacementWorld(
            commitments: commitments,
            live: Dictionary(records.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a }),
            members: try await members, cordons: try await cordons, clusters: try await clusters)
    }

    func state(of name: String) -> NodeState {
        guard live[name] != nil else { return .dead }
        return cordons[name] == nil ? .ready : .cordoned
    }

    /// Every known node as placement sees it, with what the other clusters hold on it.
    func views(excluding cluster: String?) -> [NodeView] {
        let ledger = CommitmentLedger(summaries: clusters, excluding: cluster)
        var records = Dictionary(members.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for (name, record) in live { records[name] = record }
        return records.values.sorted { $0.name < $1.name }.map { ledger.view(of: $0, state: state(of: $0.name)) }
    }

    func place(_ request: PlacementRequest) throws(ModelError) -> [String: String] {
        try Placement.place(request, on: views(excluding: request.cluster))
    }

    /// The commitment writes for `cluster` as it will be recorded: every node it holds
    /// memory on, with the revision read and the node's new total.
    func commitments(for cluster: VirtualCluster) -> [Catalog.Commitment] {
        let others = CommitmentLedger(summaries: clusters, excluding: cluster.name)
        return CommitmentLedger.commitment(of: cluster).keys.sorted().map { name in
            Catalog.Commitment(
                node: name, readRevision: commitments[name]?.modRevision,
                committedMiB: others.committedMiB(of: name) + CommitmentLedger.commitment(of: cluster)[name, default: 0]
            )
        }
    }
}
