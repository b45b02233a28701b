import Foundation
import VCModel

/// What the live nodes write about a node that died: who fences it now (a claim under the
/// fencer's lease) and which of its incarnations are fenced for good.
extension Catalog {
    /// Who is fencing a dead node now: held under the fencer's lease, so that the claim
    /// dies with the fencer and another live node fences instead.
    public func fencingKey(_ node: String) -> String { "\(prefix)/fencing/\(node)" }
    /// The incarnations fenced on a node, for good.
    public func fencedKey(_ node: String) -> String { "\(prefix)/fenced/\(node)" }

    /// Every node's fenced incarnations, by node.
    public func fenced() async throws(CatalogError) -> [String: NodeLoss.Fenced] {
        let all: [Versioned<NodeLoss.Fenced>] = try await readAll("\(prefix)/fenced/")
        return Dictionary(all.map { ($0.value.node, $0.value) }, uniquingKeysWith: { a, _ in a })
    }

    /// Claims the fencing of `node` for `by`, under `by`'s lease: only while `node` holds
    /// no lease and nobody else fences it. One etcd transaction per dead node, so exactly
    /// one live node fences it at a time.
    public func claimFencing(_ node: String, by: String, lease: Int64) async throws(CatalogError) -> Bool {
        try await etcd.txn(
            [.absent(nodeKey(node)), .absent(fencingKey(node))],
            success: [.put(fencingKey(node), Array(by.utf8), lease: lease)])
    }

    /// Records `initiators` as fenced on their node, added to what was fenced there before,
    /// and ends the claim, in one transaction (retried if the record changed meanwhile).
    public func recordFenced(_ fence: NodeLoss.Fenced) async throws(CatalogError) {
        let key = fencedKey(fence.node)
        for _ in 0..<8 {
            let existing = try await etcd.get(key)
            var merged = fence
            if let existing {
                let old: NodeLoss.Fenced = try decode(existing)
                merged.initiators.formUnion(old.initiators)
            }
            let unchanged: Compare = existing.map { .modRevision(key, equals: $0.modRevision) } ?? .absent(key)
            if try await etcd.txn(
                [unchanged], success: [.put(key, try encode(merged)), .delete(fencingKey(fence.node))])
            {
                return
            }
        }
        throw .conflict(key: key)
    }

    /// Gives up a claim to fence `node` (the fencing failed; another try, by any node, follows).
    public func dropFencing(_ node: String, by: String) async throws(CatalogError) {
        try await etcd.txn(
            [.value(fencingKey(node), equals: Array(by.utf8))], success: [.delete(fencingKey(node))])
    }

}
