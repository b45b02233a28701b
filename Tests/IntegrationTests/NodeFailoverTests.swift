import Foundation
import Testing
import VCModel

/// A node dies with VMs on it: a live node fences it at the storage and its VMs run again
/// on the other nodes, from their own disks, without anyone asking.
@Suite(.serialized) struct NodeFailoverTests {
    /// Every process of the node running two VMs of a 4-VM cluster is SIGKILLed. Both VMs
    /// run on the other nodes within seconds, as new incarnations, booted from the disks
    /// they had (each guest counts its disk's second boot); the dead node's initiator
    /// names are in no ACL and no session at tgtd and are recorded fenced; the VMs that
    /// were elsewhere are not touched. The node, back, keeps nothing of them and starts
    /// nothing; destroy then leaves nothing anywhere.
    @Test(.timeLimit(.minutes(15)))
    func aKilledNodesVMsRunElsewhereFromTheirOwnDisks() async throws {
        try await NodeTestbed.with(computeNodes: 3) { bed in
            let name = "fo"
            let shown = try await makeCluster(bed, name, vms: 4)
            let perNode = Dictionary(grouping: shown.vms, by: \.node).mapValues(\.count)
            let victim = try #require(perNode.first { $0.value == 2 }?.key, "no node holds two VMs: \(perNode)")
            let witness = try #require(bed.nodes.first { $0 != victim })
            for vm in shown.vms {
                try await waitForConsole(bed, vm.node, name, vm.name, "PEERLESS-TINY-BOOTS count=1")
            }
            let lost = shown.cluster.vms.filter { $0.node == victim }
            let kept = shown.cluster.vms.filter { $0.node != victim }

            try await bed.kill(victim)
            let killed = ContinuousClock.now
            let after = try await movedOff(bed, victim, cluster: name, vms: lost, asking: witness)
            print("node loss to every VM running elsewhere: \(ContinuousClock.now - killed)")
            #expect(after.cluster.state == .running, "\(after.cluster)")

            for vm in after.cluster.vms {
                if let before = lost.first(where: { $0.name == vm.name }) {
                    // A new incarnation on a live node, from the same disk.
                    #expect(vm.node != victim && vm.generation == before.generation + 1, "\(vm)")
                    #expect(vm.diskFile == before.diskFile)
                    try await waitForConsole(bed, vm.node, name, vm.name, "PEERLESS-TINY-BOOTS count=2")
                } else {
                    // Untouched: same node, same incarnation.
                    let before = try #require(kept.first { $0.name == vm.name })
                    #expect(vm.node == before.node && vm.generation == before.generation, "\(vm)")
                }
            }
            // Cut off at tgtd: no ACL and no I_T nexus names the old incarnations.
            let targets = try await bed.exec(
                bed.storage, ["tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target"])
            for vm in lost {
                #expect(!targets.stdout.contains(vm.initiator), "\(vm.initiator) at tgtd:\n\(targets.stdout)")
            }
            let fenced = try await bed.etcdctl(["get", "/peerless/fenced/\(victim)", "--print-value-only"])
            for vm in lost { #expect(fenced.stdout.contains(vm.initiator), "\(fenced.stdout)") }

            // Back, the node holds none of them and starts nothing of its old share.
            try await bed.restart(victim)
            try await holdsNothing(bed, victim, of: name)
            let still = try await bed.vcJSON(witness, ClusterStatus.self, ["cluster", "show", name])
            #expect(still.vms.allSatisfy { $0.domain == "running" && $0.node != victim }, "\(still.vms)")

            let destroyed = try await bed.vc(witness, ["cluster", "destroy", name])
            #expect(destroyed.status == 0, "\(destroyed)")
            let left = try await SeveralNodesBoundaryTests().leftovers(bed, of: name, vms: 4, on: bed.nodes)
            #expect(left.isEmpty, "\(left)")
        }
    }

    /// A node cut off (from everything, or only from etcd, in one direction) stops its own
    /// VMs before they start elsewhere: `virsh list` sampled on every node all along never
    /// shows a VM running on two nodes. Its VMs run on the other nodes, their old
    /// incarnations hold no session at tgtd (a cut-off QEMU's connection is not closed by
    /// its death: the fencing closes it), and after the heal nothing of them comes back.
    @Test(.timeLimit(.minutes(15)), arguments: [Cut.everything, .etcdOutbound])
    func aCutOffNodeStopsItsVMsBeforeTheyRunElsewhere(cut: Cut) async throws {
        try await NodeTestbed.with(computeNodes: 3) { bed in
            let name = "cut"
            let shown = try await makeCluster(bed, name, vms: 3)
            let victim = try #require(shown.vms.first?.node)
            let witness = try #require(bed.nodes.first { $0 != victim })
            let lost = shown.cluster.vms.filter { $0.node == victim }

            let sampler = RunningSampler(bed: bed, cluster: name)
            let sampling = Task { await sampler.run() }
            switch cut {
            case .everything: try await bed.partition([victim])
            case .etcdOutbound: try await bed.partition([victim], direction: .outbound, etcdOnly: true)
            }
            let after = try await movedOff(bed, victim, cluster: name, vms: lost, asking: witness)
            // Cut off, it stopped them by itself.
            let running = try await bed.exec(victim, ["virsh", "-c", "qemu:///system", "list", "--name"])
            #expect(!running.stdout.contains("\(name)-"), "still running on \(victim): \(running.stdout)")
            if running.stdout.contains("\(name)-") {
                print("---- vcd on \(victim) ----\n\(tail(bed.logFile(victim, "vcd"), lines: 40))")
            }
            let targets = try await bed.exec(
                bed.storage, ["tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target"])
            for vm in lost {
                #expect(!targets.stdout.contains(vm.initiator), "\(vm.initiator) at tgtd:\n\(targets.stdout)")
            }

            try await bed.heal()
            try await holdsNothing(bed, victim, of: name)
            // A few more samples with the node back, then the verdict.
            try await Task.sleep(for: .seconds(3))
            sampling.cancel()
            let twice = await sampling.value
            #expect(twice.isEmpty, "running on two nodes at once: \(twice.prefix(5))")
            print("sampled virsh list on every node \(await sampler.samples) times")
            let again = try await bed.exec(
                bed.storage, ["tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target"])
            for vm in lost {
                #expect(!again.stdout.contains(vm.initiator), "\(vm.initiator) back at tgtd:\n\(again.stdout)")
            }
            let still = try await bed.vcJSON(witness, ClusterStatus.self, ["cluster", "show", name])
            #expect(still.vms.allSatisfy { $0.domain == "running" }, "\(still.vms)")
            if !still.vms.allSatisfy({ $0.domain == "running" }) { bed.dumpLogs() }
            #expect(still.cluster.vms.map(\.node) == after.cluster.vms.map(\.node))

            let destroyed = try await bed.vc(witness, ["cluster", "destroy", name])
            #expect(destroyed.status == 0, "\(destroyed)")
        }
    }

    /// A node's vcd is stopped (SIGSTOP) for longer than its lease lives, then continued:
    /// meanwhile its VM was fenced and runs on another node. Continued, the node does not
    /// act on the lease it believed it held: it kills the stale QEMU, drops the domain,
    /// admits no old name, registers anew and is ready again, and the cluster runs on.
    @Test(.timeLimit(.minutes(10)))
    func aNodeWhoseVcdWasStoppedPastItsLeaseStandsDown() async throws {
        try await NodeTestbed.with(computeNodes: 3) { bed in
            let name = "nap"
            let shown = try await makeCluster(bed, name, vms: 3)
            let victim = try #require(shown.vms.first?.node)
            let witness = try #require(bed.nodes.first { $0 != victim })
            let lost = shown.cluster.vms.filter { $0.node == victim }

            try await bed.pause(victim)
            let moved = try await movedOff(bed, victim, cluster: name, vms: lost, asking: witness)
            try await bed.unpause(victim)
            try await holdsNothing(bed, victim, of: name)
            _ = try await eventually("\(victim) to be ready again", timeout: .seconds(60), every: .seconds(1)) {
                let nodes = (try? await bed.vcJSON(witness, [NodeSummary].self, ["node", "list"])) ?? []
                let state = nodes.first { $0.record.name == victim }?.state
                return (state == .ready ? true : nil, "\(String(describing: state))")
            }
            let targets = try await bed.exec(
                bed.storage, ["tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target"])
            for vm in lost {
                #expect(!targets.stdout.contains(vm.initiator), "\(vm.initiator) at tgtd:\n\(targets.stdout)")
            }
            let still = try await bed.vcJSON(witness, ClusterStatus.self, ["cluster", "show", name])
            #expect(still.vms.allSatisfy { $0.domain == "running" }, "\(still.vms)")
            #expect(still.cluster.vms.map(\.node) == moved.cluster.vms.map(\.node), "\(still.cluster.vms)")
            let destroyed = try await bed.vc(witness, ["cluster", "destroy", name])
            #expect(destroyed.status == 0, "\(destroyed)")
        }
    }

    enum Cut: String, Sendable, CustomTestStringConvertible {
        case everything, etcdOutbound
        var testDescription: String { rawValue }
    }

    /// Imports the tiny image and creates a cluster of `vms` 128 MiB VMs through n3.
    func makeCluster(_ bed: NodeTestbed, _ name: String, vms: Int) async throws -> ClusterStatus {
        let imported = try await bed.vc(bed.storage, ["image", "import", "tiny", Build.tinyImage])
        #expect(imported.status == 0, "\(imported)")
        let created = try await bed.vc(
            "n3", ["cluster", "create", name, "--image", "tiny", "--vms", "\(vms)", "--memory", "128M"])
        try #require(created.status == 0, "\(created)")
        return try await bed.vcJSON("n3", ClusterStatus.self, ["cluster", "show", name])
    }

    /// Waits until every one of `vms` (placed on `victim` before) runs on another node and
    /// no operation holds the cluster, as `witness` shows it.
    func movedOff(
        _ bed: NodeTestbed, _ victim: String, cluster name: String, vms lost: [VirtualMachine], asking witness: String
    ) async throws -> ClusterStatus {
        try await eventually(
            "the VMs of \(victim) to run on other nodes", timeout: .seconds(120), every: .milliseconds(200)
        ) { () async throws -> (ClusterStatus?, String) in
            guard let s = try? await bed.vcJSON(witness, ClusterStatus.self, ["cluster", "show", name]) else {
                return (nil, "no answer from \(witness)")
            }
            let moved = s.vms.filter { vm in lost.contains { $0.name == vm.name } }
            let done = s.operation == nil && moved.allSatisfy { $0.node != victim && $0.domain == "running" }
            return (done ? s : nil, "\(moved.map { "\($0.name) on \($0.node): \($0.domain)" })")
        }
    }

    /// Waits until `node` has no domain of the cluster, running or defined.
    func holdsNothing(_ bed: NodeTestbed, _ node: String, of name: String) async throws {
        _ = try await eventually("\(node) to drop its domains of \(name)", timeout: .seconds(90), every: .seconds(1)) {
            let domains = try await bed.exec(node, ["virsh", "-c", "qemu:///system", "list", "--all", "--name"])
            let mine = domains.stdout.split(whereSeparator: \.isNewline).filter { $0.hasPrefix("\(name)-") }
            return (mine.isEmpty ? true : nil, "\(mine)")
        }
    }

    /// Waits for `line` on the serial console of `vm` as written on `node`.
    func waitForConsole(_ bed: NodeTestbed, _ node: String, _ cluster: String, _ vm: String, _ line: String)
        async throws
    {
        let log = "\(bed.stateDirectory(node))/consoles/\(cluster)/\(vm).log"
        _ = try await eventually("\(vm) to print \(line) on \(node)", timeout: .seconds(240), every: .seconds(1)) {
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            return (text.contains(line) ? true : nil, String(text.suffix(200)))
        }
    }
}

/// Lists the running domains of one cluster on every compute node, over and over, and
/// keeps each instant at which one VM ran on two nodes.
actor RunningSampler {
    let bed: NodeTestbed
    let cluster: String
    private(set) var samples = 0

    init(bed: NodeTestbed, cluster: String) {
        self.bed = bed
        self.cluster = cluster
    }

    /// Until cancelled; returns the VMs seen on two nodes, with the nodes.
    func run() async -> [String] {
        var twice: [String] = []
        while !Task.isCancelled {
            var seen: [String: [String]] = [:]
            await withTaskGroup(of: (String, [String]).self) { group in
                for node in bed.nodes {
                    group.addTask { [bed, cluster] in
                        let r = try? await bed.exec(node, ["virsh", "-c", "qemu:///system", "list", "--name"])
                        let names = (r?.stdout ?? "").split(whereSeparator: \.isNewline).map(String.init)
                        return (node, names.filter { $0.hasPrefix("\(cluster)-") })
                    }
                }
                for await (node, names) in group {
                    for vm in names { seen[vm, default: []].append(node) }
                }
            }
            samples += 1
            for (vm, nodes) in seen where nodes.count > 1 { twice.append("\(vm) on \(nodes.sorted())") }
            try? await Task.sleep(for: .milliseconds(100))
        }
        return twice
    }
}
