import Foundation
import Testing
import VCModel

/// The multi-node testbed itself: its nodes must be as separate as real machines are where
/// Peerless can tell (host name, libvirt host UUID, files, network), its failures must be
/// real failures, and `down` must leave nothing.
@Suite(.serialized) struct NodeTestbedTests {
    @Test(.timeLimit(.minutes(3)))
    func eachNodeHasItsOwnHostNameLibvirtAndFiles() async throws {
        try await NodeTestbed.with(computeNodes: 3, vcd: false) { bed in
            for node in bed.allNodes {
                let name = try await bed.exec(node, ["hostname"])
                #expect(name.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == node, "\(name)")
            }

            var uuids: [String: String] = [:]
            for node in bed.nodes {
                let caps = try await bed.exec(node, ["virsh", "-c", "qemu:///system", "capabilities"])
                #expect(caps.status == 0, "\(caps)")
                uuids[node] = Self.element("uuid", in: caps.stdout)
            }
            #expect(uuids.values.count == 3 && Set(uuids.values).count == 3, "libvirt host UUIDs: \(uuids)")

            let probe = "isolation-\(UUID().uuidString.lowercased())"
            let write = try await bed.exec("n1", ["sh", "-c", "echo n1 > /var/lib/peerless/\(probe)"])
            #expect(write.status == 0, "\(write)")
            #expect(FileManager.default.fileExists(atPath: "\(bed.stateDirectory("n1"))/\(probe)"))
            for node in bed.allNodes where node != "n1" {
                let seen = try await bed.exec(node, ["test", "-e", "/var/lib/peerless/\(probe)"])
                #expect(seen.status == 1, "\(node) sees n1's file: \(seen)")
            }
            #expect(!FileManager.default.fileExists(atPath: "/var/lib/peerless/\(probe)"), "the host sees n1's file")
        }
    }

    @Test(.timeLimit(.minutes(3)))
    func etcdHasThreeStartedMembers() async throws {
        try await NodeTestbed.with(computeNodes: 3, vcd: false) { bed in
            let r = try await bed.etcdctl(["member", "list", "-w", "json"])
            #expect(r.status == 0, "\(r)")
            struct Members: Decodable {
                struct Member: Decodable {
                    var name: String?
                    var clientURLs: [String]?
                }
                var members: [Member]
            }
            let members = try JSONDecoder().decode(Members.self, from: Data(r.stdout.utf8)).members
            // A member that never started has no name yet.
            #expect(members.compactMap(\.name).sorted() == ["n1", "n2", "n3"], "\(r.stdout)")
            #expect(Set(members.flatMap { $0.clientURLs ?? [] }) == Set(bed.etcdEndpoints), "\(r.stdout)")
            let health = try await bed.etcdctl(["endpoint", "health"])
            #expect(health.status == 0, "\(health)")
        }
    }

    @Test(.timeLimit(.minutes(3)))
    func partitionCutsANodeOffUntilHeal() async throws {
        try await NodeTestbed.with(computeNodes: 3, vcd: false) { bed in
            let n1 = bed.address("n1")
            #expect(try await Self.reaches(bed, "n2", n1, port: 2379))

            try await bed.partition(["n2"])
            #expect(!(try await Self.reaches(bed, "n2", n1, port: 2379)), "n2 still reaches n1's etcd")
            #expect(try await Self.reaches(bed, "n3", n1, port: 2379), "n3 lost n1's etcd too")
            let status = try await bed.status()
            #expect(
                status.split(whereSeparator: \.isNewline).contains { $0.hasPrefix("n2") && $0.hasSuffix("partitioned") }
            )

            try await bed.heal()
            _ = try await eventually("n2 to reach n1's etcd again", timeout: .seconds(10)) {
                (try await Self.reaches(bed, "n2", n1, port: 2379) ? true : nil, "unreachable")
            }

            // Only etcd's ports: the node is still reachable, its etcd is not.
            try await bed.partition(["n2"], etcdOnly: true)
            #expect(!(try await Self.reaches(bed, "n2", n1, port: 2379)))
            let ping = try await bed.exec("n2", ["virsh", "-c", "qemu:///system", "version"])
            #expect(ping.status == 0, "\(ping)")
            try await bed.heal()
        }
    }

    @Test(.timeLimit(.minutes(3)))
    func killLeavesNoProcessAndRestartBringsTheNodeBack() async throws {
        try await NodeTestbed.with(computeNodes: 3, vcd: false) { bed in
            #expect(!(try await bed.processes("n3")).isEmpty)
            try await bed.kill("n3")
            let left = try await bed.processes("n3")
            #expect(left.isEmpty, "processes left in n3: \(left)")
            #expect(try await bed.exec("n3", ["true"]).status != 0, "a killed node still runs commands")
            // Two members of three keep the quorum; a write may wait for a new leader (n3 may have been it).
            _ = try await eventually("a write with n3 dead", timeout: .seconds(20)) {
                let r = try await bed.etcdctl(["put", "/testbed/after-kill", "yes"])
                return (r.status == 0 ? true : nil, r.stderr)
            }

            try await bed.restart("n3")
            let name = try await bed.exec("n3", ["hostname"])
            #expect(name.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "n3", "\(name)")
            let n3 = "--endpoints=http://\(bed.address("n3")):2379"
            _ = try await eventually("the restarted member to have the write", timeout: .seconds(20)) {
                let r = try await bed.hub(["etcdctl", n3, "get", "/testbed/after-kill", "--print-value-only"])
                return (r.stdout.contains("yes") ? true : nil, "\(r)")
            }
        }
    }

    @Test(.timeLimit(.minutes(3)))
    func pauseStopsEveryProcessOfTheNodeUntilUnpause() async throws {
        try await NodeTestbed.with(computeNodes: 1, vcd: false) { bed in
            try await bed.pause("n1", all: true)
            let states = try await bed.processes("n1").map { NodeTestbed.state($0) ?? "gone" }
            #expect(!states.isEmpty && states.allSatisfy { $0 == "T" }, "states: \(states)")
            try await bed.unpause("n1", all: true)
            let after = try await bed.processes("n1").map { NodeTestbed.state($0) ?? "gone" }
            #expect(!after.contains("T"), "states: \(after)")
            let version = try await bed.exec("n1", ["virsh", "-c", "qemu:///system", "version"])
            #expect(version.status == 0, "\(version)")
        }
    }

    /// A loop device without autoclear on a storage-node file and a process no PID file
    /// knows stand for what vcd and a crashed daemon leave behind.
    @Test(.timeLimit(.minutes(3)))
    func downLeavesNoNamespaceDirectoryLoopDeviceOrProcess() async throws {
        let bed = try await NodeTestbed.up(computeNodes: 3, vcd: false)
        let footprint: NodeTestbed.Footprint
        do {
            let loop = try await bed.exec(
                "stor",
                [
                    "sh", "-c",
                    "truncate -s 64M /var/lib/peerless/leftover.img && losetup --find --show /var/lib/peerless/leftover.img",
                ])
            #expect(loop.status == 0 && loop.stdout.hasPrefix("/dev/loop"), "\(loop)")
            let stray = try await bed.exec("n2", ["sh", "-c", "setsid sleep 600 </dev/null >/dev/null 2>&1 &"])
            #expect(stray.status == 0, "\(stray)")
            footprint = try await bed.footprint()
            let found = try await NodeTestbed.leftovers(after: footprint)
            #expect(found.contains { $0.hasPrefix("loop device") }, "the check sees the loop device: \(found)")
            #expect(found.contains { $0.contains("sleep 600") }, "the check sees the stray process: \(found)")
        } catch {
            try? await bed.down()
            throw error
        }
        try await bed.down()
        let left = try await NodeTestbed.leftovers(after: footprint)
        #expect(left.isEmpty, "left after down: \(left)")
        // And down is idempotent.
        try await bed.down()
    }

    @Test(.timeLimit(.minutes(5)))
    func everyNodesVCDAnswersOverTheTestbedNetwork() async throws {
        try await NodeTestbed.with(computeNodes: 3) { bed in
            for node in bed.allNodes {
                let r = try await bed.vcnode(node, ["status", "--output", "json"])
                let decoder = JSONDecoder()
                decoder.dateDecodingStrategy = .iso8601
                let status = try? decoder.decode(NodeStatus.self, from: Data(r.stdout.utf8))
                #expect(status?.record.name == node, "\(node): \(r)")
                #expect(status?.record.underlay == bed.address(node), "\(node): \(r)")
            }
            let listed = try await eventually("every node to be ready in vc node list", timeout: .seconds(30)) {
                let nodes = try await bed.vcJSON("n3", [NodeSummary].self, ["node", "list"])
                let ready = nodes.filter { $0.state == .ready }.map(\.record.name).sorted()
                return (ready == bed.allNodes.sorted() ? ready : nil, "\(ready)")
            }
            #expect(listed == ["n1", "n2", "n3", "stor"])
        }
    }

    // MARK: - helpers

    static func reaches(_ bed: NodeTestbed, _ node: String, _ address: String, port: Int) async throws -> Bool {
        // Any HTTP answer, even an error, means the port was reached.
        let r = try await bed.exec(
            node,
            ["curl", "-s", "-o", "/dev/null", "-m", "2", "-w", "%{http_code}", "http://\(address):\(port)/version"])
        return r.stdout != "000" && !r.stdout.isEmpty
    }

    static func element(_ name: String, in xml: String) -> String? {
        guard let start = xml.range(of: "<\(name)>"),
            let end = xml.range(of: "</\(name)>", range: start.upperBound..<xml.endIndex)
        else { return nil }
        return String(xml[start.upperBound..<end.lowerBound])
    }
}
