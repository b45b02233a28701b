import Foundation
import Testing
import VCModel

/// The technician takes nodes out with `vcnode remove`: a node that still takes VMs, or
/// whose etcd member etcd cannot lose, is refused with one line and nothing changed; a
/// dead node and a drained one go, each with its etcd member, and a removed vcd that
/// still runs does not come back. The catalog keeps working on the member left.
@Suite(.serialized) struct NodeRemoveTests {
    @Test(.timeLimit(.minutes(10)))
    func drainedAndDeadNodesGoWithTheirEtcdMembersAndQuorumIsKept() async throws {
        try await NodeTestbed.with(computeNodes: 3) { bed in
            // Ready: the technician drains first.
            let ready = try await bed.vcnode("n3", ["remove", "n2"])
            #expect(ready.status != 0 && ready.stderr.contains("node n2 is ready"), "\(ready)")
            #expect(ready.stderr.split(separator: "\n").count == 1, "one line: \(ready.stderr)")
            #expect(try await members(bed) == ["n1", "n2", "n3"])

            // n2 drained, n1 dead: removing n2's member would leave n3 alone of two voters.
            #expect(try await bed.vcnode("n3", ["drain", "n2"]).status == 0)
            try await bed.kill("n1")
            _ = try await eventually("n1 to be seen dead", timeout: .seconds(60), every: .milliseconds(500)) {
                let state = try? await state(bed, "n1")
                return (state == .dead ? true : nil, "\(String(describing: state))")
            }
            let quorum = try await bed.vcnode("n3", ["remove", "n2"])
            #expect(
                quorum.status != 0 && quorum.stderr.contains("below a quorum of 2")
                    && quorum.stderr.contains("bring n1 back or remove it first"), "\(quorum)")
            #expect(try await members(bed) == ["n1", "n2", "n3"], "nothing changed")
            #expect(try await state(bed, "n2") == .cordoned, "nothing changed")

            // The dead one first: its member goes, then its records.
            let dead = try await bed.vcnode("n3", ["remove", "n1"])
            #expect(dead.status == 0, "\(dead)")
            #expect(dead.stdout.contains("node n1 removed (its etcd member too; 2 of 2"), "\(dead.stdout)")
            #expect(try await members(bed) == ["n2", "n3"])
            #expect(try await state(bed, "n1") == nil, "n1 is gone from vc node list")

            // Now n2 may go (one voter left, healthy): its vcd still runs, and stays out.
            let lease = try await bed.etcdctl(["get", "/peerless/nodes/n2", "--write-out", "json"])
            let last = try await bed.vcnode("n3", ["remove", "n2", "--output", "json"])
            #expect(last.status == 0, "\(last)")
            let removed = try JSONDecoder().decode(NodeRemovedResponse.self, from: Data(last.stdout.utf8))
            #expect(removed.etcdMember == "n2" && removed.etcdVoters == 1 && removed.etcdHealthyVoters == 1)
            #expect(try await members(bed) == ["n3"])
            // Past a few of its renewals (TTL 3 s here), n2 has not registered again.
            try await Task.sleep(for: .seconds(6))
            #expect(try await state(bed, "n2") == nil, "the removed n2 came back")
            let log = (try? String(contentsOfFile: bed.logFile("n2", "vcd"), encoding: .utf8)) ?? ""
            #expect(log.contains("node n2 was removed from the cluster"), "n2's vcd says why it stays out")
            // Its registration lease is gone: it holds nothing another node could wait on.
            let id = try #require(Self.leaseID(lease.stdout), "no lease in \(lease.stdout)")
            let ttl = try await bed.etcdctl(["lease", "timetolive", String(id, radix: 16)])
            #expect(ttl.stdout.contains("already expired") || ttl.stdout.contains("not found"), "\(ttl)")
            let again = try await bed.vcnode("n3", ["remove", "n2"])
            #expect(again.status != 0 && again.stderr.contains("no node named 'n2'"), "\(again)")

            // The catalog works on the member left: a VM is created, on the only ready node.
            #expect(try await bed.vc(bed.storage, ["image", "import", "tiny", Build.tinyImage]).status == 0)
            let created = try await bed.vc("n3", ["cluster", "create", "rm", "--image", "tiny", "--vms", "1"])
            #expect(created.status == 0, "\(created)")
            let shown = try await bed.vcJSON("n3", ClusterStatus.self, ["cluster", "show", "rm"])
            #expect(shown.vms.map(\.node) == ["n3"], "\(shown.vms)")
            #expect(try await bed.vc("n3", ["cluster", "destroy", "rm"]).status == 0)
        }
    }

    /// The lease of the one key in `etcdctl get --write-out json`'s answer.
    static func leaseID(_ json: String) -> Int64? {
        struct Answer: Decodable {
            struct KV: Decodable { var lease: Int64? }
            var kvs: [KV]?
        }
        return (try? JSONDecoder().decode(Answer.self, from: Data(json.utf8)))?.kvs?.first?.lease
    }

    /// The etcd members' names, as etcdctl lists them.
    func members(_ bed: NodeTestbed) async throws -> [String] {
        let r = try await bed.etcdctl(["member", "list", "--write-out", "simple"])
        return r.stdout.split(separator: "\n").compactMap { line in
            let f = line.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            return f.count > 2 ? f[2] : nil
        }.sorted()
    }

    /// `name`'s state in `vc node list` as n3 gives it; nil when it is not listed.
    func state(_ bed: NodeTestbed, _ name: String) async throws -> NodeState? {
        try await bed.vcJSON("n3", [NodeSummary].self, ["node", "list"]).first { $0.record.name == name }?.state
    }
}
