import Foundation
import Testing
import VCModel

/// The technician empties a node before taking it out: `vcnode drain` moves each VM that
/// runs there to another node while its guest runs, and refuses, changing nothing, when
/// the VMs would fit nowhere else.
@Suite(.serialized) struct NodeDrainTests {
    static let tick = "testing: {guestOEM: [\"peerless.tick=1\"]}"

    /// A 3-VM cluster over three nodes, each guest counting seconds on its console. The
    /// drain of one node moves its VM live: the count goes on at the destination with
    /// every number once and no gap beyond the guest's measured pause (plus the sampling
    /// slack stated below); `virsh list` sampled on every node never shows the VM on two;
    /// the VM has a new incarnation, the old one is in no ACL and no session at tgtd; the
    /// other VMs are not touched; the node stays cordoned with nothing placed on it.
    @Test(.timeLimit(.minutes(15)))
    func aDrainMovesEachVMLiveAndTheGuestCountsOn() async throws {
        try await NodeTestbed.with(computeNodes: 3, extra: ["n1": Self.tick, "n2": Self.tick, "n3": Self.tick]) { bed in
            let name = "dr"
            let shown = try await NodeFailoverTests().makeCluster(bed, name, vms: 3)
            #expect(Set(shown.vms.map(\.node)) == Set(bed.nodes), "one VM per node: \(shown.vms)")
            for vm in shown.vms {
                try await NodeFailoverTests().waitForConsole(bed, vm.node, name, vm.name, "PEERLESS-TINY-TICK n=3")
            }
            let moving = try #require(shown.cluster.vms.first)
            let victim = moving.node
            let witness = try #require(bed.nodes.first { $0 != victim })

            // Running guests only: while a live migration copies memory, the destination's
            // QEMU exists paused beside the source's, and runs only once the source paused.
            let sampler = RunningSampler(bed: bed, cluster: name, runningOnly: true)
            let sampling = Task { await sampler.run() }
            let ticks = TickSampler(bed: bed, cluster: name, vm: moving.name)
            let counting = Task { await ticks.run() }
            let drained = try await bed.vcnode(victim, ["drain"])
            // A few more ticks at the destination before the samplers stop.
            try await Task.sleep(for: .seconds(4))
            sampling.cancel()
            counting.cancel()
            let twice = await sampling.value
            let seen = await counting.value
            #expect(drained.status == 0, "\(drained)")
            print("vcnode drain \(victim):\n\(drained.stderr)\(drained.stdout)")
            // The progress lines (on stderr), one per VM, then the outcome (on stdout).
            #expect(drained.stderr.contains("migrate \(moving.name): live to "), "\(drained.stderr)")
            #expect(drained.stdout.contains("node \(victim) is drained: 1 VM(s) moved live"), "\(drained.stdout)")
            #expect(twice.isEmpty, "a VM ran on two nodes at once: \(twice)")

            let after = try await bed.vcJSON(witness, ClusterStatus.self, ["cluster", "show", name])
            let moved = try #require(after.vms.first { $0.name == moving.name })
            let record = try #require(after.cluster.vms.first { $0.name == moving.name })
            #expect(moved.node != victim && moved.domain == "running", "\(moved)")
            #expect(record.generation == moving.generation + 1, "\(record)")
            for before in shown.cluster.vms where before.name != moving.name {
                let now = try #require(after.cluster.vms.first { $0.name == before.name })
                #expect(now.node == before.node && now.generation == before.generation, "untouched: \(now)")
            }
            #expect(after.cluster.state == .running && after.operation == nil, "\(after.cluster)")

            // The count carried over: every number once, on the origin then on the destination.
            let downtime = try #require(Self.pausedMilliseconds(drained.stderr), "no pause measured: \(drained.stderr)")
            try #require(!seen.ticks.isEmpty, "no tick seen")
            let numbers = seen.ticks.map(\.n)
            #expect(seen.twice.isEmpty, "ticks printed on two nodes: \(seen.twice)")
            #expect(numbers == Array(numbers.first!...numbers.last!), "ticks missing: \(numbers)")
            #expect(Set(seen.ticks.map(\.node)) == [victim, moved.node], "\(seen.ticks.map(\.node))")
            // A tick a second, seen by polling the console logs every 100 ms from a host that
            // runs every node on two cores: 1 s, plus the pause, plus at most 1.5 s of
            // scheduling and sampling slack.
            let gaps = zip(seen.ticks.dropFirst(), seen.ticks).map { ($0.at - $1.at) / .milliseconds(1) }
            let widest = gaps.max() ?? 0
            print("drain: guest paused \(downtime) ms; widest gap between ticks seen \(Int(widest)) ms")
            #expect(widest <= Double(1000 + downtime + 1500), "a gap of \(widest) ms in the guest's count: \(gaps)")

            // tgtd admits the new incarnation alone; the old one is gone.
            let targets = try await bed.exec(
                bed.storage, ["tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target"])
            #expect(!targets.stdout.contains(moving.initiator), "\(moving.initiator) still at tgtd")
            #expect(targets.stdout.contains(record.initiator), "\(record.initiator) not admitted")

            let nodes = try await bed.vcJSON(witness, [NodeSummary].self, ["node", "list"])
            let state = try #require(nodes.first { $0.record.name == victim })
            #expect(state.state == .cordoned && state.vms == 0, "\(state)")
            try await NodeFailoverTests().holdsNothing(bed, victim, of: name)

            // Uncordoned, it takes VMs again.
            let opened = try await bed.vcnode(victim, ["uncordon"])
            #expect(opened.status == 0 && opened.stdout.contains("is ready"), "\(opened)")

            let destroyed = try await bed.vc(witness, ["cluster", "destroy", name])
            #expect(destroyed.status == 0, "\(destroyed)")
            let left = try await SeveralNodesBoundaryTests().leftovers(bed, of: name, vms: 3, on: bed.nodes)
            #expect(left.isEmpty, "\(left)")
        }
    }

    /// With the other nodes cordoned, the drain of the node a cluster runs on is refused in
    /// one line naming the reason, and nothing changes: the node is not left cordoned, the
    /// VM does not move. `--force` suspends the cluster instead, and says so.
    @Test(.timeLimit(.minutes(10)))
    func aDrainWithNowhereToGoIsRefusedOrWithForceSuspends() async throws {
        try await NodeTestbed.with(computeNodes: 2) { bed in
            let imported = try await bed.vc(bed.storage, ["image", "import", "tiny", Build.tinyImage])
            #expect(imported.status == 0, "\(imported)")
            let created = try await bed.vc(
                "n1",
                ["cluster", "create", "solo", "--image", "tiny", "--vms", "1", "--memory", "128M", "--node", "n1"])
            try #require(created.status == 0, "\(created)")
            let cordoned = try await bed.vcnode("n1", ["cordon", "n2", "--reason", "disk swap"])
            #expect(cordoned.status == 0 && cordoned.stdout.contains("cordoned (disk swap)"), "\(cordoned)")

            let refused = try await bed.vcnode("n1", ["drain"])
            #expect(refused.status != 0, "\(refused)")
            let line = refused.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(line.split(whereSeparator: \.isNewline).count == 1, "one line: \(line)")
            #expect(
                line.contains("cannot drain n1") && line.contains("fit on no other node") && line.contains("--force"),
                "\(line)")
            let nodes = try await bed.vcJSON("n2", [NodeSummary].self, ["node", "list"])
            #expect(nodes.first { $0.record.name == "n1" }?.state == .ready, "the refused drain left n1 as it was")
            let still = try await bed.vcJSON("n2", ClusterStatus.self, ["cluster", "show", "solo"])
            #expect(still.vms.first?.node == "n1" && still.vms.first?.domain == "running", "\(still.vms)")

            let forced = try await bed.vcnode("n1", ["drain", "--force"])
            #expect(forced.status == 0, "\(forced)")
            #expect(forced.stderr.contains("suspending it (--force)"), "\(forced.stderr)")
            #expect(forced.stdout.contains("cluster(s) solo suspended"), "\(forced.stdout)")
            let asleep = try await bed.vcJSON("n2", ClusterStatus.self, ["cluster", "show", "solo"])
            #expect(asleep.cluster.state == .suspended, "\(asleep.cluster)")

            let unknown = try await bed.vcnode("n1", ["drain", "n9"])
            #expect(unknown.status != 0 && unknown.stderr.contains("no node named 'n9'"), "\(unknown)")

            let destroyed = try await bed.vc("n2", ["cluster", "destroy", "solo"])
            #expect(destroyed.status == 0, "\(destroyed)")
        }
    }

    /// A live migration that fails for real (the destination QEMU listens where the source
    /// cannot reach it) falls back to suspend, move and resume, and says so: the VM runs on
    /// the destination with its memory restored (the guest's count goes on, every number
    /// once), under its new incarnation alone at tgtd.
    @Test(.timeLimit(.minutes(10)))
    func aFailedLiveMigrationFallsBackToSuspendMoveAndResume() async throws {
        let broken = "testing: {guestOEM: [\"peerless.tick=1\"], breakLiveMigration: true}"
        try await NodeTestbed.with(computeNodes: 2, extra: ["n1": broken, "n2": Self.tick]) { bed in
            let vm = try await Self.countingVM(bed, cluster: "fb", on: "n1", asking: "n2")

            let ticks = TickSampler(bed: bed, cluster: "fb", vm: vm.name)
            let counting = Task { await ticks.run() }
            let drained = try await bed.vcnode("n1", ["drain"])
            print("vcnode drain n1 (live migration broken):\n\(drained.stderr)\(drained.stdout)")
            try #require(drained.status == 0, "\(drained)")
            try await NodeFailoverTests().waitForConsole(bed, "n2", "fb", vm.name, "PEERLESS-TINY-TICK")
            try await Task.sleep(for: .seconds(3))
            counting.cancel()
            let seen = await counting.value
            #expect(drained.stderr.contains("migrate \(vm.name): live migration failed ("), "\(drained.stderr)")
            #expect(drained.stderr.contains("suspended it to the storage node instead, it resumes on n2"))
            #expect(drained.stdout.contains("1 by suspend and resume (live migration failed)"), "\(drained.stdout)")

            let after = try await bed.vcJSON("n2", ClusterStatus.self, ["cluster", "show", "fb"])
            let record = try #require(after.cluster.vms.first)
            #expect(after.vms.first?.node == "n2" && after.vms.first?.domain == "running", "\(after.vms)")
            #expect(record.generation == vm.generation + 1, "\(record)")
            // Restored, not booted again: the count goes on from where it was.
            let numbers = seen.ticks.map(\.n)
            try #require(!numbers.isEmpty)
            #expect(numbers == Array(numbers.first!...numbers.last!), "ticks missing: \(numbers)")
            #expect(Set(seen.ticks.map(\.node)) == ["n1", "n2"], "\(seen.ticks.map(\.node))")
            let targets = try await bed.exec(
                bed.storage, ["tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target"])
            #expect(!targets.stdout.contains(vm.initiator) && targets.stdout.contains(record.initiator))
            let saves = try await bed.exec(bed.storage, ["ls", "/var/lib/peerless/pool/saves/fb"])
            #expect(saves.stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "memory image kept: \(saves)")

            let destroyed = try await bed.vc("n2", ["cluster", "destroy", "fb"])
            #expect(destroyed.status == 0, "\(destroyed)")
        }
    }

    /// The node that coordinates a drain dies while the VM's move is under way (the
    /// destination is slow, so the kill lands between the admission and the live
    /// migration): a live node takes the operation over and settles it from where the VM
    /// runs. The cluster is free again, the VM runs on one node only (sampled every 100 ms
    /// all along), the one its record names, its guest counting on with every number once,
    /// and tgtd admits that incarnation alone.
    @Test(.timeLimit(.minutes(10)))
    func aDrainWhoseCoordinatorDiesIsSettledFromWhereTheVMRuns() async throws {
        let slow = "testing: {stepDelayMilliseconds: 3000}"
        try await NodeTestbed.with(computeNodes: 3, extra: ["n1": Self.tick, "n2": slow]) { bed in
            let vm = try await Self.countingVM(bed, cluster: "kd", on: "n1", asking: "n1")
            // Only n2 can take it, and n3 coordinates.
            #expect(try await bed.vcnode("n1", ["cordon", "n3"]).status == 0)

            let sampler = RunningSampler(bed: bed, cluster: "kd", runningOnly: true)
            let sampling = Task { await sampler.run() }
            let ticks = TickSampler(bed: bed, cluster: "kd", vm: vm.name)
            let counting = Task { await ticks.run() }
            let drain = Task { try await bed.vcnode("n3", ["drain", "n1"]) }
            // Killed once the destination's incarnation is admitted beside the running one
            // (n2's define steps still to come, 3 s each).
            _ = try await eventually(
                "the destination's incarnation to be admitted", timeout: .seconds(60), every: .milliseconds(100)
            ) {
                let targets = try await bed.exec(
                    bed.storage, ["tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target"])
                let names = Self.initiators(of: "disk.\(vm.name)", in: targets.stdout)
                return (names.count >= 2 ? true : nil, "\(names)")
            }
            try await bed.kill("n3")
            let drained = try await drain.value
            #expect(drained.status != 0, "the drain's coordinator died: \(drained)")

            let settled = try await eventually(
                "a live node to settle the migrate", timeout: .seconds(90), every: .milliseconds(500)
            ) { () async throws -> (ClusterStatus?, String) in
                guard let s = try? await bed.vcJSON("n1", ClusterStatus.self, ["cluster", "show", "kd"]) else {
                    return (nil, "no answer")
                }
                let done = s.operation == nil && s.vms.first?.domain == "running"
                return (done ? s : nil, "\(s.cluster.state) \(String(describing: s.operation?.kind)) \(s.vms)")
            }
            let record = try #require(settled.cluster.vms.first)
            let runs = try #require(settled.vms.first)
            print("settled after the coordinator died: \(vm.name) on \(runs.node), generation \(record.generation)")
            #expect(runs.node == record.node && ["n1", "n2"].contains(runs.node), "\(runs) vs \(record)")
            #expect(settled.cluster.state == .running, "\(settled.cluster)")
            // Counting on where it runs now.
            try await Task.sleep(for: .seconds(3))
            sampling.cancel()
            counting.cancel()
            let twice = await sampling.value
            let seen = await counting.value
            #expect(twice.isEmpty, "a VM ran on two nodes at once: \(twice)")
            let numbers = seen.ticks.map(\.n)
            try #require(!numbers.isEmpty)
            #expect(numbers == Array(numbers.first!...numbers.last!), "ticks missing: \(numbers)")
            #expect(seen.ticks.last?.node == runs.node, "\(seen.ticks.suffix(3))")
            // tgtd admits the running incarnation and no other of this VM.
            let targets = try await bed.exec(
                bed.storage, ["tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target"])
            let names = Self.initiators(of: "disk.\(vm.name)", in: targets.stdout)
            #expect(names == [record.initiator], "initiator names at \(vm.name)'s target: \(names)\n\(targets.stdout)")

            let destroyed = try await bed.vc("n1", ["cluster", "destroy", "kd"])
            #expect(destroyed.status == 0, "\(destroyed)")
        }
    }

    /// A 1-VM cluster of 128 MiB pinned to `node`, created through `asking`, once its guest
    /// has counted to 3 on its console.
    static func countingVM(_ bed: NodeTestbed, cluster: String, on node: String, asking: String) async throws
        -> VirtualMachine
    {
        let imported = try await bed.vc(bed.storage, ["image", "import", "tiny", Build.tinyImage])
        #expect(imported.status == 0, "\(imported)")
        let created = try await bed.vc(
            asking,
            ["cluster", "create", cluster, "--image", "tiny", "--vms", "1", "--memory", "128M", "--node", node])
        try #require(created.status == 0, "\(created)")
        let before = try await bed.vcJSON(asking, ClusterStatus.self, ["cluster", "show", cluster])
        let vm = try #require(before.cluster.vms.first)
        try await NodeFailoverTests().waitForConsole(bed, node, cluster, vm.name, "PEERLESS-TINY-TICK n=3")
        return vm
    }

    /// The initiator names in the ACL and the sessions of the target whose name ends in
    /// `suffix`, from `tgtadm --op show --mode target`.
    static func initiators(of suffix: String, in listing: String) -> Set<String> {
        var names: Set<String> = []
        var inTarget = false
        var inACL = false
        for raw in listing.split(whereSeparator: \.isNewline) {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if raw.hasPrefix("Target ") {
                inTarget = line.hasSuffix(suffix)
                inACL = false
                continue
            }
            guard inTarget else { continue }
            if line.hasPrefix("Initiator: ") {
                names.insert(String(line.dropFirst("Initiator: ".count).split(separator: " ").first ?? ""))
            } else if line.hasSuffix("information:") {
                inACL = line == "ACL information:"
            } else if inACL && !line.isEmpty {
                names.insert(line)
            }
        }
        return names
    }

    /// "paused N ms" from a drain's progress line.
    static func pausedMilliseconds(_ text: String) -> Int? {
        guard let r = text.range(of: ", paused ") else { return nil }
        return Int(text[r.upperBound...].prefix { $0.isNumber })
    }
}

/// Reads one VM's console log on every compute node every 100 ms and keeps each tick
/// (`PEERLESS-TINY-TICK n=K`) with the node it was printed on and when it was first seen.
actor TickSampler {
    struct Tick: Sendable {
        var n: Int
        var node: String
        var at: ContinuousClock.Instant
    }

    let bed: NodeTestbed
    let cluster: String
    let vm: String

    init(bed: NodeTestbed, cluster: String, vm: String) {
        self.bed = bed
        self.cluster = cluster
        self.vm = vm
    }

    /// Until cancelled: the ticks in the order seen, and the numbers printed on two nodes.
    func run() async -> (ticks: [Tick], twice: [Int]) {
        var ticks: [Int: Tick] = [:]
        var twice: Set<Int> = []
        var firstSample: ContinuousClock.Instant?
        while !Task.isCancelled {
            let now = ContinuousClock.now
            if firstSample == nil { firstSample = now }
            for node in bed.nodes {
                let log = "\(bed.stateDirectory(node))/consoles/\(cluster)/\(vm).log"
                let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
                for line in text.split(whereSeparator: \.isNewline) {
                    guard let r = line.range(of: "PEERLESS-TINY-TICK n="),
                        let n = Int(line[r.upperBound...].prefix { $0.isNumber })
                    else { continue }
                    if let known = ticks[n] {
                        if known.node != node { twice.insert(n) }
                    } else {
                        ticks[n] = Tick(n: n, node: node, at: now)
                    }
                }
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
        // The ticks printed before sampling began were all seen at once: only the last of
        // them is kept, as where the count stood.
        let sorted = ticks.values.sorted { $0.n < $1.n }
        let before = sorted.last { $0.at == firstSample }
        let during = sorted.filter { $0.at != firstSample }
        return ((before.map { [$0] } ?? []) + during, twice.sorted())
    }
}
