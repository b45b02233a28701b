import Foundation
import Testing

@testable import VCModel

@Suite struct ClusterSummaryTests {
    /// The record bench/list.sh stores 1,000 times: a real 4-VM create over three nodes.
    static func benchRecord() throws -> Data {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("bench/cluster-record.json")
        let envelope = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any]
        return try JSONSerialization.data(withJSONObject: envelope?["value"] ?? [:])
    }

    static var decoder: JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        return d
    }

    @Test func aStoredRecordDecodedAsASummaryIsTheSummaryOfTheFullRecord() throws {
        let json = try Self.benchRecord()
        let full = try Self.decoder.decode(VirtualCluster.self, from: json)
        let summary = try Self.decoder.decode(ClusterSummary.self, from: json)
        #expect(summary == ClusterSummary(full))
        #expect(summary.name == "c4" && summary.state == .running && summary.network.cidr == "10.77.1.0/24")
        #expect(summary.vms.map(\.node) == ["n1", "n2", "n3", "n1"])
        #expect(summary.nodes == ["n1", "n2", "n3"])
    }

    @Test func aSummaryKeepsTheKeysOfTheFullRecordForScripts() throws {
        let summary = try Self.decoder.decode(ClusterSummary.self, from: try Self.benchRecord())
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        let object = try JSONSerialization.jsonObject(with: encoder.encode(summary)) as? [String: Any]
        let spec = object?["spec"] as? [String: Any]
        #expect(spec?["name"] as? String == "c4")
        #expect(object?["state"] as? String == "running")
        #expect((object?["network"] as? [String: Any])?["cidr"] as? String == "10.77.1.0/24")
        #expect(object?["createdAt"] as? String == "2026-12-02T01:00:05Z")
        #expect(((object?["vms"] as? [[String: Any]])?.first)?["node"] as? String == "n1")
    }

    @Test func theLedgerOfSummariesIsTheLedgerOfTheRecords() {
        let clusters = ClusterState.allCases.enumerated().map { i, state in
            PlacementTests.cluster("c\(i)", state: state, memory: 128 * (i + 1), nodes: ["a", "b", "a"])
        }
        for excluding in [nil, "c0", "c3"] {
            let records = CommitmentLedger(clusters: clusters, excluding: excluding)
            #expect(CommitmentLedger(summaries: clusters.map(ClusterSummary.init), excluding: excluding) == records)
        }
    }
}
