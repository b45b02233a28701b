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
            // Read through etcd's election after the heal.
            let still = try await clusterShown(
                bed, name, asking: witness, "the cluster after the heal", timeout: .seconds(60))
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

    /// Kill and partition, over and over, on one cluster: after each round every VM runs,
    /// none ran on two nodes at any sampled instant, and the node back holds nothing of
    /// what moved off it. `PEERLESS_NODELOSS_ROUNDS` rounds of each (default 10 here, about 25 s a round;
    /// `scripts/soak-nodeloss.sh` runs many more) and a report of VMs lost, VMs seen on
    /// two nodes and leftovers, all of which must be 0.
    // Long enough for the soak's 50 rounds of each (about 25 s a round).
    @Test(.timeLimit(.minutes(90)))
    func killAndPartitionOverAndOverLoseNothing() async throws {
        let rounds = Int(ProcessInfo.processInfo.environment["PEERLESS_NODELOSS_ROUNDS"] ?? "") ?? 10
        try await NodeTestbed.with(computeNodes: 3) { bed in
            let name = "loop"
            _ = try await makeCluster(bed, name, vms: 3)
            let sampler = RunningSampler(bed: bed, cluster: name)
            let sampling = Task { await sampler.run() }
            var (lost, leftovers, disturbed) = (0, 0, 0)
            for round in 1...(2 * rounds) {
                // Read through an etcd election (a node back from a round rejoins etcd).
                let before = try await clusterShown(bed, name, asking: "n3", "the cluster before the round")
                // The node of the first VM, and another node to ask.
                let victim = try #require(before.vms.first?.node)
                let witness = try #require(bed.nodes.first { $0 != victim })
                let moving = before.cluster.vms.filter { $0.node == victim }
                let kill = round % 2 == 1
                if kill { try await bed.kill(victim) } else { try await bed.partition([victim]) }
                let started = ContinuousClock.now
                do {
                    _ = try await movedOff(bed, victim, cluster: name, vms: moving, asking: witness)
                } catch {
                    lost += moving.count
                    Issue.record("round \(round) (\(kill ? "kill" : "partition") \(victim)): \(error)")
                }
                print(
                    "round \(round): \(kill ? "kill" : "partition") \(victim), back elsewhere after \(ContinuousClock.now - started)"
                )
                if kill { try await bed.restart(victim) } else { try await bed.heal() }
                do {
                    try await holdsNothing(bed, victim, of: name)
                } catch {
                    leftovers += 1
                    Issue.record("round \(round): \(victim) kept domains: \(error)")
                }
                _ = try await eventually("every node ready", timeout: .seconds(90), every: .seconds(1)) {
                    let nodes = (try? await bed.vcJSON(witness, [NodeSummary].self, ["node", "list"])) ?? []
                    let ready = nodes.filter { bed.nodes.contains($0.record.name) && $0.state == .ready }.count
                    return (ready == bed.nodes.count ? true : nil, "\(nodes.map { "\($0.record.name) \($0.state)" })")
                }
                // A VM that was not on the lost node and is not running now was stopped by a
                // node that did not need to (a false self-fence): it comes back, but its
                // guest rebooted. One that does not come back is lost.
                let now = try await clusterShown(bed, name, asking: witness, "the cluster after the round")
                let down = now.vms.filter { $0.domain != "running" }
                let stopped = down.filter { vm in !moving.contains { $0.name == vm.name } }
                disturbed += stopped.count
                if !stopped.isEmpty {
                    print("round \(round): stopped on a node that was not lost: \(stopped.map(\.name))")
                }
                let back = try? await eventually("every VM running", timeout: .seconds(60), every: .seconds(1)) {
                    let s = try? await bed.vcJSON(witness, ClusterStatus.self, ["cluster", "show", name])
                    let notRunning = (s?.vms ?? []).filter { $0.domain != "running" }.map(\.name)
                    return (s != nil && notRunning.isEmpty ? true : nil, "\(notRunning)")
                }
                if back == nil { lost += down.count }
            }
            sampling.cancel()
            let twice = await sampling.value
            print(
                "\(2 * rounds) rounds: VMs lost \(lost), VMs on two nodes at once \(Set(twice.map { $0.prefix { $0 != " " } }).count), leftovers \(leftovers), VMs stopped on nodes that were not lost \(disturbed), samples \(await sampler.samples)"
            )
            #expect(lost == 0 && leftovers == 0)
            #expect(twice.isEmpty, "running on two nodes at once: \(twice.prefix(5))")
            // Reported, not asserted: such a VM comes back by itself (its guest rebooted);
            // the issue's bar is lost, doubled and left over.
            if lost + leftovers + disturbed > 0 || !twice.isEmpty { bed.dumpLogs() }
            #expect(try await bed.vc("n3", ["cluster", "destroy", name]).status == 0)
            let left = try await SeveralNodesBoundaryTests().leftovers(bed, of: name, vms: 3, on: bed.nodes)
            #expect(left.isEmpty, "\(left)")
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

    /// A step sent to a node that is cut off while it runs holds its operation no longer
    /// than the node's lease: a create whose only VM is pinned to n2, each step of which
    /// takes 20 s there, fails soon after n2 is partitioned midway (its lease expires; the
    /// call to it would otherwise wait out the 30-minute step timeout, and a recovery
    /// waiting the same way holds every lost VM that long), is undone, and n2, healed,
    /// keeps nothing of it.
    @Test(.timeLimit(.minutes(10)))
    func aStepOnANodeCutOffMidwayEndsWithTheNodesLease() async throws {
        try await NodeTestbed.with(computeNodes: 3, extra: ["n2": "testing: {stepDelayMilliseconds: 20000}"]) { bed in
            let imported = try await bed.vc(bed.storage, ["image", "import", "tiny", Build.tinyImage])
            try #require(imported.status == 0, "\(imported)")
            let ended = Outcome()
            let create = Task {
                let r = try await bed.vc(
                    "n1",
                    ["cluster", "create", "cut", "--image", "tiny", "--vms", "1", "--memory", "128M", "--node", "n2"])
                await ended.set(r)
                return r
            }
            // The storage's steps take a second or two; n2's first one then runs for 20 s.
            try await Task.sleep(for: .seconds(6))
            try await bed.partition(["n2"])
            let cut = ContinuousClock.now
            let result = try? await eventually("the create to end", timeout: .seconds(60), every: .milliseconds(250)) {
                (await ended.result, "still running")
            }
            print("create ended \(ContinuousClock.now - cut) after n2 was cut off")
            try await bed.heal()
            let created = try await create.value
            #expect(result != nil, "the create still waited on n2 a minute after n2 was cut off")
            #expect(created.status != 0, "\(created)")
            #expect("\(created.stdout)\(created.stderr)".contains("n2"), "\(created)")
            _ = try await eventually("every node ready", timeout: .seconds(90), every: .seconds(1)) {
                let nodes = (try? await bed.vcJSON("n1", [NodeSummary].self, ["node", "list"])) ?? []
                let ready = nodes.filter { bed.nodes.contains($0.record.name) && $0.state == .ready }.count
                return (ready == bed.nodes.count ? true : nil, "\(nodes.map { "\($0.record.name) \($0.state)" })")
            }
            let left = try await eventually("nothing of cut anywhere", timeout: .seconds(60), every: .seconds(2)) {
                let left = try await SeveralNodesBoundaryTests().leftovers(bed, of: "cut", vms: 1, on: bed.nodes)
                let record = try await bed.etcdctl(["get", "/peerless/clusters/cut", "--print-value-only"])
                let all = left + (record.stdout.isEmpty ? [] : ["the catalog still has cut: \(record.stdout)"])
                return (all.isEmpty ? true : nil, "\(all)")
            }
            #expect(left)
        }
    }

    /// What a command run in the background gave, once it ended.
    actor Outcome {
        private(set) var result: CommandResult?
        func set(_ r: CommandResult) { result = r }
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
    /// `vc cluster show NAME` on `node`, asked every second until answered: a read during
    /// an etcd election is refused ("no quorum at the moment").
    func clusterShown(
        _ bed: NodeTestbed, _ name: String, asking node: String, _ what: String, timeout: Duration = .seconds(30)
    ) async throws -> ClusterStatus {
        try await eventually(what, timeout: timeout, every: .seconds(1)) {
            let s = try? await bed.vcJSON(node, ClusterStatus.self, ["cluster", "show", name])
            return (s, "no answer")
        }
    }

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
    /// Only domains whose guest runs (`virsh list --state-running`); else every active
    /// domain, paused ones included.
    let runningOnly: Bool
    private(set) var samples = 0

    init(bed: NodeTestbed, cluster: String, runningOnly: Bool = false) {
        self.bed = bed
        self.cluster = cluster
        self.runningOnly = runningOnly
    }

    /// Until cancelled; returns the VMs seen on two nodes, with the nodes.
    func run() async -> [String] {
        var twice: [String] = []
        while !Task.isCancelled {
            var seen: [String: [String]] = [:]
            await withTaskGroup(of: (String, [String]).self) { group in
                for node in bed.nodes {
                    group.addTask { [bed, cluster, runningOnly] in
                        let r = try? await bed.exec(
                            node,
                            ["virsh", "-c", "qemu:///system", "list", "--name"]
                                + (runningOnly ? ["--state-running"] : []))
                        let names = (r?.stdout ?? "").split(whereSeparator: \.isNewline).map(String.init)
                        return (node, names.filter { $0.hasPrefix("\(cluster)-") })
                    }
                }
                for await (node, names) in group {
                    for vm in names { seen[vm, default: []].append(node) }
                }
            }
            samples += 1
            for (vm, listed) in seen where listed.count > 1 {
                // libvirtd lists a domain as running from its status file until its
                // reconnect finds the QEMU gone (right after a killed node restarts): only a
                // QEMU process that runs counts.
                var nodes: [String] = []
                for node in listed where await qemuRuns(vm, on: node) { nodes.append(node) }
                guard nodes.count > 1 else { continue }
                twice.append(
                    "\(vm) on \(nodes.sorted()) at \(Date().formatted(.iso8601.time(includingFractionalSeconds: true)))"
                )
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
        return twice
    }

    /// Whether the QEMU of `vm` that the node's libvirtd started still runs.
    func qemuRuns(_ vm: String, on node: String) async -> Bool {
        let r = try? await bed.exec(node, ["cat", "/run/libvirt/qemu/\(vm).pid"])
        guard let pid = Int32((r?.stdout ?? "").trimmingCharacters(in: .whitespacesAndNewlines)),
            let raw = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline")
        else { return false }
        return raw.split(separator: 0).contains { String(decoding: $0, as: UTF8.self).hasPrefix("guest=\(vm)") }
    }
}
