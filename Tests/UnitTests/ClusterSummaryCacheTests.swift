import Foundation
import Testing
import VCModel

@testable import VCCatalog

@Suite struct ClusterSummaryCacheTests {
    static func summary(_ name: String, state: ClusterState = .running) -> ClusterSummary {
        let epoch = Date(timeIntervalSince1970: 0)
        return ClusterSummary(
            spec: .init(name: name, image: "i", vms: 1, vcpus: 1, memoryMiB: 128), state: state,
            network: .init(cidr: "10.0.1.0/24"), vms: [.init(name: "\(name)-1", node: "n1")], createdAt: epoch,
            updatedAt: epoch)
    }

    /// A record whose bytes say which summary it holds: `name:state`.
    static func kv(_ name: String, _ state: ClusterState = .running, revision: Int64 = 1) -> KeyValue {
        KeyValue(
            key: "/p/clusters/\(name)", value: Array("\(name):\(state.rawValue)".utf8), createRevision: 1,
            modRevision: revision, lease: 0)
    }

    final class Decodes {
        var keys: [String] = []
    }

    static func list(_ cache: ClusterSummaryCache, _ kvs: [KeyValue], _ log: Decodes) throws -> [ClusterSummary] {
        try cache.summaries(of: kvs) { (kv) throws(CatalogError) -> ClusterSummary in
            log.keys.append(kv.key)
            let parts = String(decoding: kv.value, as: UTF8.self).split(separator: ":").map(String.init)
            return summary(parts[0], state: ClusterState(rawValue: parts[1]) ?? .failed)
        }
    }

    @Test func onlyRecordsWhoseBytesChangedAreDecodedAgain() throws {
        let cache = ClusterSummaryCache()
        let log = Decodes()
        #expect(try Self.list(cache, [Self.kv("a"), Self.kv("b")], log).map(\.name) == ["a", "b"])
        #expect(log.keys == ["/p/clusters/a", "/p/clusters/b"])
        log.keys = []
        let again = try Self.list(cache, [Self.kv("a"), Self.kv("b", .suspended, revision: 2)], log)
        #expect(log.keys == ["/p/clusters/b"])
        #expect(again == [Self.summary("a"), Self.summary("b", state: .suspended)])
    }

    /// A fresh etcd numbers revisions from 1 again: the same revision with other bytes is
    /// another record.
    @Test func theSameRevisionWithOtherBytesIsDecodedAgain() throws {
        let cache = ClusterSummaryCache()
        let log = Decodes()
        _ = try Self.list(cache, [Self.kv("a", .running, revision: 5)], log)
        let after = try Self.list(cache, [Self.kv("a", .failed, revision: 5)], log)
        #expect(after == [Self.summary("a", state: .failed)])
        #expect(log.keys.count == 2)
    }

    @Test func aRecordNoLongerListedIsForgotten() throws {
        let cache = ClusterSummaryCache()
        let log = Decodes()
        _ = try Self.list(cache, [Self.kv("a"), Self.kv("b")], log)
        #expect(try Self.list(cache, [Self.kv("b")], log).map(\.name) == ["b"])
        log.keys = []
        _ = try Self.list(cache, [Self.kv("a"), Self.kv("b")], log)
        #expect(log.keys == ["/p/clusters/a"])
    }
}
