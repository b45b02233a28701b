import Foundation
import Testing
import VCModel

/// Peerless on several nodes: three compute nodes and a storage node on the namespace
/// testbed, each with its own libvirtd, etcd member and vcd, the disks only on the
/// storage node, reached over iSCSI across the testbed network.
@Suite(.serialized) struct SeveralNodesTests {
    /// A cluster created through one node spreads over all three, boots from the storage
    /// node's targets, and its VMs reach each other by name over the VXLAN; suspended
    /// through another node, it resumes on the live nodes after the one that held half of it
    /// was killed and its files removed; destroyed through a third, it leaves nothing on
    /// any node, on the storage node or in the catalog.
    @Test(.timeLimit(.minutes(15)))
    func aClusterSpansNodesAndResumesAfterANodeIsGone() async throws {
        try await NodeTestbed.with(computeNodes: 3) { bed in
            let imported = try await bed.vc(bed.storage, ["image", "import", "tiny", Build.tinyImage])
            #expect(imported.status == 0, "\(imported)")
            let name = "span"
            let created = try await bed.vc(
                "n3", ["cluster", "create", name, "--image", "tiny", "--vms", "4", "--memory", "128M"])
            #expect(created.status == 0, "\(created)")
            let shown = try await bed.vcJSON("n1", ClusterStatus.self, ["cluster", "show", name])
            // Spread: 2/1/1 over three equal nodes, and the NODE column names real nodes.
            let perNode = Dictionary(grouping: shown.vms, by: \.node).mapValues(\.count)
            #expect(Set(perNode.keys) == ["n1", "n2", "n3"], "\(perNode)")
            #expect(perNode.values.sorted() == [1, 1, 2], "\(perNode)")
            #expect(shown.vms.allSatisfy { $0.domain == "running" }, "\(shown.vms)")

            // Every guest reached every peer by name: DNS from its node's dnsmasq, the
            // peers on other nodes over the VXLAN, with the MTU the tunnel leaves.
            for vm in shown.vms {
                let log = "\(bed.stateDirectory(vm.node))/consoles/\(name)/\(vm.name).log"
                _ = try await eventually("\(vm.name) to reach its peers", timeout: .seconds(240), every: .seconds(1)) {
                    let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
                    if text.contains("PEERLESS-TINY-PEERS-FAILED") {
                        Issue.record("\(vm.name) could not reach a peer: \(text.suffix(400))")
                        return (true, "failed")
                    }
                    return (text.contains("PEERLESS-TINY-PEERS-OK") ? true : nil, String(text.suffix(200)))
                }
                let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
                #expect(text.contains("PEERLESS-TINY-MTU dev=eth0 mtu=1450"), "\(vm.name): \(text.suffix(300))")
            }
            // No node holds a disk: the VMs' disks are files on the storage node only.
            for node in bed.nodes {
                let pool = try await bed.exec(node, ["ls", "/var/lib/peerless"])
                #expect(!pool.stdout.contains("pool"), "\(node) has a pool: \(pool.stdout)")
            }

            // Suspend through n1, then n1 dies and its files go: the memory images are on
            // the storage node, so the cluster resumes on n2 and n3.
            let suspended = try await bed.vc("n1", ["cluster", "suspend", name])
            #expect(suspended.status == 0, "\(suspended)")
            let saves = try await bed.exec(bed.storage, ["ls", "/var/lib/peerless/pool/saves/\(name)"])
            #expect(saves.stdout.split(whereSeparator: \.isNewline).count == 4, "\(saves)")
            let onN1 = shown.vms.filter { $0.node == "n1" }.map(\.name)
            try await bed.kill("n1")
            try await bed.wipe("n1")
            #expect(!FileManager.default.fileExists(atPath: bed.stateDirectory("n1")))
            _ = try await eventually("n1 to be seen dead", timeout: .seconds(60), every: .seconds(1)) {
                // n1's etcd member died with it: a read during the election is refused.
                let nodes = (try? await bed.vcJSON("n2", [NodeSummary].self, ["node", "list"])) ?? []
                let state = nodes.first { $0.record.name == "n1" }?.state
                return (state == .dead ? true : nil, "\(String(describing: state))")
            }
            let resumed = try await bed.vc("n2", ["cluster", "resume", name])
            #expect(resumed.status == 0, "\(resumed)")
            let after = try await bed.vcJSON("n2", ClusterStatus.self, ["cluster", "show", name])
            #expect(after.cluster.state == .running)
            for vm in after.vms {
                #expect(vm.node != "n1" && vm.domain == "running", "\(vm)")
            }
            // The moved VMs are new incarnations: a generation of their own.
            for vm in after.cluster.vms where onN1.contains(vm.name) {
                #expect(vm.generation == 2 && vm.initiator.contains(".\(vm.node).vm.\(vm.name).g2"), "\(vm)")
            }
            // What each guest wrote to its disk before the suspend is still there.
            for vm in after.cluster.vms {
                let disk = "/var/lib/peerless/pool/\(vm.diskFile)"
                let id = try await bed.exec(bed.storage, ["debugfs", "-R", "cat /var/lib/peerless/id", disk])
                #expect(id.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == vm.name, "\(id)")
            }

            // Destroy through n2: nothing of the cluster anywhere.
            let destroyed = try await bed.vc("n2", ["cluster", "destroy", name])
            #expect(destroyed.status == 0, "\(destroyed)")
            for node in ["n2", "n3"] {
                let domains = try await bed.exec(node, ["virsh", "-c", "qemu:///system", "list", "--all", "--name"])
                #expect(domains.stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "\(node): \(domains)")
                let links = try await bed.exec(node, ["ip", "-o", "link", "show"])
                #expect(!links.stdout.contains("vcbr"), "\(node): \(links.stdout)")
                let tables = try await bed.exec(node, ["nft", "list", "tables"])
                #expect(!tables.stdout.contains("peerless_"), "\(node): \(tables.stdout)")
            }
            let targets = try await bed.exec(
                bed.storage, ["tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target"])
            #expect(!targets.stdout.contains("disk.\(name)-"), "\(targets.stdout)")
            let files = try await bed.exec(
                bed.storage, ["find", "/var/lib/peerless/pool/disks", "/var/lib/peerless/pool/saves", "-mindepth", "1"])
            #expect(files.stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "\(files.stdout)")
            let keys = try await bed.etcdctl(["get", "--prefix", "/peerless", "--keys-only"])
            #expect(!keys.stdout.contains("/\(name)"), "\(keys.stdout)")
        }
    }

    /// Two creates that each fit on a node but not together, sent at the same moment to
    /// two different nodes: the per-node commitment written with the placement lets only
    /// one win, and the loser is told why in one line and leaves nothing.
    @Test(.timeLimit(.minutes(10)))
    func twoCreatesOnTwoNodesCannotBothCommitTheSameMemory() async throws {
        // 2048 MiB offered, 256 kept back: 1792 MiB free on n1.
        let small = "capacity: {memoryMiB: 2048}"
        try await NodeTestbed.with(computeNodes: 2, extra: ["n1": small, "n2": small]) { bed in
            let imported = try await bed.vc(bed.storage, ["image", "import", "tiny", Build.tinyImage])
            #expect(imported.status == 0, "\(imported)")
            let results = try await withThrowingTaskGroup(of: (String, CommandResult).self) { group in
                for (name, via) in [("ra", "n1"), ("rb", "n2")] {
                    group.addTask {
                        let r = try await bed.vc(
                            via,
                            [
                                "cluster", "create", name, "--image", "tiny", "--vms", "1", "--memory", "1000M",
                                "--node", "n1",
                            ])
                        return (name, r)
                    }
                }
                return try await group.reduce(into: [String: CommandResult]()) { $0[$1.0] = $1.1 }
            }
            let won = results.filter { $0.value.status == 0 }.map(\.key)
            #expect(won.count == 1, "\(results)")
            for (name, r) in results where r.status != 0 {
                #expect(r.stderr.contains("does not fit") || r.stderr.contains("not enough memory"), "\(r)")
                let gone = try await bed.vc("n2", ["cluster", "show", name])
                #expect(gone.status != 0, "the losing create left a cluster: \(gone)")
            }
            // The node list counts the winner's commitment on n1.
            let nodes = try await bed.vcJSON("n2", [NodeSummary].self, ["node", "list"])
            #expect(nodes.first { $0.record.name == "n1" }?.committedMiB == 1000, "\(nodes)")
            // Bad pins: one line each, nothing made.
            let unknown = try await bed.vc(
                "n1", ["cluster", "create", "rc", "--image", "tiny", "--vms", "1", "--node", "n9"])
            #expect(unknown.status != 0 && unknown.stderr.contains("no node named 'n9'"), "\(unknown)")
            let storage = try await bed.vc(
                "n1", ["cluster", "create", "rc", "--image", "tiny", "--vms", "1", "--node", bed.storage])
            #expect(storage.status != 0 && storage.stderr.contains("does not run VMs"), "\(storage)")
            for name in won { #expect(try await bed.vc("n1", ["cluster", "destroy", name]).status == 0) }
        }
    }

    /// With one etcd member down every change still works through the others; with two
    /// down each change is refused with one line naming the cause, and works again when
    /// the members are back.
    @Test(.timeLimit(.minutes(10)))
    func oneEtcdMemberDownIsFineTwoAreRefusedCleanly() async throws {
        try await NodeTestbed.with(computeNodes: 3) { bed in
            let imported = try await bed.vc(bed.storage, ["image", "import", "tiny", Build.tinyImage])
            #expect(imported.status == 0, "\(imported)")
            try await bed.kill("n3")
            // Once the others have seen n3 go (its lease expired, so etcd has a leader
            // again), creates and destroys work through the two members left. A request
            // that arrives during the election itself is refused with "retry shortly".
            _ = try await eventually("n3 to be seen dead", timeout: .seconds(60), every: .seconds(1)) {
                let nodes = try? await bed.vcJSON("n1", [NodeSummary].self, ["node", "list"])
                let state = nodes?.first { $0.record.name == "n3" }?.state
                return (state == .dead ? true : nil, "\(String(describing: state))")
            }
            let one = try await bed.vc(
                "n1", ["cluster", "create", "q1", "--image", "tiny", "--vms", "2", "--memory", "128M"])
            #expect(one.status == 0, "\(one)")
            let placed = try await bed.vcJSON("n2", ClusterStatus.self, ["cluster", "show", "q1"])
            #expect(placed.vms.allSatisfy { $0.node != "n3" }, "\(placed.vms)")
            #expect(try await bed.vc("n2", ["cluster", "destroy", "q1"]).status == 0)

            try await bed.kill("n2")
            let refused = try await bed.vc(
                "n1", ["cluster", "create", "q2", "--image", "tiny", "--vms", "1", "--memory", "128M"])
            #expect(refused.status != 0, "\(refused)")
            let line = refused.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(!line.contains("\n") && line.lowercased().contains("quorum"), "\(refused)")

            // n2 back: two of three members again.
            try await bed.restart("n2")
            let again = try await eventually("a create to work again", timeout: .seconds(120), every: .seconds(2)) {
                let r = try await bed.vc(
                    "n1", ["cluster", "create", "q2", "--image", "tiny", "--vms", "1", "--memory", "128M"])
                return (r.status == 0 ? r : nil, r.stderr)
            }
            #expect(again.status == 0)
            #expect(try await bed.vc("n2", ["cluster", "destroy", "q2"]).status == 0)
        }
    }
}
