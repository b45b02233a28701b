// peerless-bench: times the storage path of a VM disk in-process, with the same code vcd
// runs (StoragePool.clone, TargetExporter.export, ISCSIClient.verifyDisk), and the
// scheduler and node plan over simulated worlds (`scale`). bench/*.sh call it and measure
// their references in the same run.
import ArgumentParser
import Foundation
import ISCSI
import Logging
import VCHost
import VCModel
import VCStorage

@main
struct PeerlessBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "peerless-bench", abstract: "Storage-path and scheduler timings for bench/.",
        subcommands: [Clone.self, Provision.self, Spawn.self, Write.self, Scale.self])
}

struct Timings: Encodable {
    var runs: Int
    var medianMs: Double
    var minMs: Double
    var maxMs: Double

    init(_ samples: [Duration]) {
        let ms = samples.map { Double($0.components.attoseconds) / 1e15 + Double($0.components.seconds) * 1000 }
            .sorted()
        runs = ms.count
        medianMs = ms[ms.count / 2]
        minMs = ms.first ?? 0
        maxMs = ms.last ?? 0
    }

    func print() {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        Swift.print(String(decoding: try! e.encode(self), as: UTF8.self))
    }
}

func makePool(_ path: String) -> StoragePool {
    var logger = Logger(label: "bench")
    logger.logLevel = .warning
    return StoragePool(configuration: PoolConfiguration(path: path), logger: logger)
}

struct Clone: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Reflink-clone a pool file N times; keep the last clone.")
    @Option(help: "Pool root (must reflink).") var pool: String
    @Option(help: "Pool-relative source file.") var source: String
    @Option(help: "Pool-relative name of the clone to keep.") var keep: String
    @Option var runs = 10

    func run() async throws {
        let p = makePool(pool)
        var samples: [Duration] = []
        for i in 0..<runs {
            let target = i == runs - 1 ? keep : "bench-clone-\(i).raw"
            try? p.remove(target)
            let t0 = ContinuousClock.now
            try p.clone(source, to: target)
            samples.append(ContinuousClock.now - t0)
            if i != runs - 1 { try p.remove(target) }
        }
        Timings(samples).print()
    }
}

struct Provision: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Provision a VM disk N times: clone, export over iSCSI, check it with libiscsi.")
    @Option(help: "Pool root (must reflink).") var pool: String
    @Option(help: "Pool-relative golden image.") var image: String
    @Option var portal = "127.0.0.1:3260"
    @Option var runs = 20

    func run() async throws {
        var logger = Logger(label: "bench")
        logger.logLevel = .warning
        let p = makePool(pool)
        let exporter = TargetExporter(logger: logger)
        let initiator = Naming.initiatorIQN(node: "bench")
        let iscsi = ISCSIClient(initiator: initiator)
        let size = try p.size(image)
        var samples: [Duration] = []
        for i in 0..<runs {
            let file = "disks/bench/bench-\(i).raw"
            let iqn = Naming.diskIQN(vm: "bench-\(i)")
            // As vcd does it: a fresh CHAP secret per disk, bound before the initiator.
            var random = SystemRandomNumberGenerator()
            let chap = CHAPCredentials(
                user: Naming.chapUser(vm: "bench-\(i)"), password: ClusterSecrets.password(using: &random))
            let t0 = ContinuousClock.now
            try p.clone(image, to: file)
            _ = try await exporter.export(iqn: iqn, file: p.path(file), initiators: [initiator], chap: chap)
            _ = try await iscsi.verifyDisk(ISCSITarget(portal: portal, iqn: iqn), expectedBytes: size, chap: chap)
            samples.append(ContinuousClock.now - t0)
            try await exporter.unexport(iqn: iqn, account: chap.user)
            try p.remove(file)
        }
        try await iscsi.shutdown()
        Timings(samples).print()
    }
}

struct Spawn: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Time running a trivial host program (the cost under every tgtadm call).")
    @Option var runs = 50

    func run() async throws {
        var samples: [Duration] = []
        for _ in 0..<runs {
            let t0 = ContinuousClock.now
            try await HostCommand.run("true", [])
            samples.append(ContinuousClock.now - t0)
        }
        Timings(samples).print()
    }
}

struct Write: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Copy a file to an iSCSI LUN with the import pipeline; print MiB/s.")
    @Option var portal = "127.0.0.1:3260"
    @Option var iqn: String
    @Option var file: String
    @Option var depth = 16
    @Option var chunkKiB = 1024

    func run() async throws {
        let client = ISCSIClient(initiator: Naming.initiatorIQN(node: "bench"))
        let fd = open(file, O_RDONLY)
        defer { close(fd) }
        var st = stat()
        fstat(fd, &st)
        let length = UInt64(st.st_size)
        let (depth, chunk) = (self.depth, chunkKiB * 1024)
        let t0 = ContinuousClock.now
        _ = try await client.withSession(ISCSITarget(portal: portal, iqn: iqn)) { session in
            try session.copy(fromFile: fd, length: length, blockSize: 512, chunkSize: chunk, depth: depth) { _ in }
        }
        let seconds = Double((ContinuousClock.now - t0) / .milliseconds(1)) / 1000
        print(String(format: "%.0f MiB/s (%.2f s)", Double(length) / 1_048_576 / seconds, seconds))
        try await client.shutdown()
    }
}

struct Scale: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Time placement decisions and node plans in simulated worlds of many nodes; print a table.")
    @Option(parsing: .upToNextOption, help: "Node counts, one world each.") var nodes = [10, 100, 1000]
    @Option(help: "VMs placed across each world before timing.") var vms = 10_000
    @Option(help: "VMs of the cluster each timed decision places.") var clusterVMs = 16
    @Option(help: "Repetitions of each timing; the median is shown.") var runs = 101
    /// The largest cluster a spec allows.
    private var largest: Int { ClusterSpec.vmRange.upperBound }

    func run() async throws {
        print("## Scheduler and node plan at scale (\(vms) VMs placed in every world, median of \(runs))")
        print()
        print(
            "| nodes | VMs on the planned node | place \(clusterVMs) VMs, spread (ms) | place, pack (ms) "
                + "| place \(largest) VMs, spread (ms) | ledger + views (ms) "
                + "| compute node plan, settled (ms) | after a restart (ms) | storage node plan (ms) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        var rows: [(nodes: Int, spread: Double, ledger: Double, plan: Double)] = []
        for count in nodes {
            let world = try ScaleWorld(nodes: count, vms: vms)
            let request = PlacementRequest(
                cluster: "new", vms: (1...clusterVMs).map { "new-\($0)" }, memoryMiB: ScaleWorld.vmMiB, vcpus: 1)
            let views = world.views()
            var packed = request
            packed.strategy = .pack
            let spread = try median(runs) { try Placement.place(request, on: views).count }
            let pack = try median(runs) { try Placement.place(packed, on: views).count }
            var big = request
            big.vms = (1...largest).map { "new-\($0)" }
            let bigSpread = try median(runs) { try Placement.place(big, on: views).count }
            let ledger = median(runs) { world.views(excluding: "new").count }
            let busiest = world.busiest
            let compute = world.desired(for: busiest)
            let settled = world.observed(by: busiest)
            let storage = world.desired(for: world.storage)
            let targets = world.observed(by: world.storage)
            for (desired, observed) in [(compute, settled), (storage, targets)] {
                let left = NodePlan.plan(desired: desired, observed: observed)
                if !left.isEmpty { FileHandle.standardError.write(Data("\(desired.node) unsettled: \(left)\n".utf8)) }
            }
            let plan = median(runs) { NodePlan.plan(desired: compute, observed: settled).count }
            let restart = median(runs) { NodePlan.plan(desired: compute, observed: ObservedNode()).count }
            let storagePlan = median(runs) { NodePlan.plan(desired: storage, observed: targets).count }
            let share = world.share(of: busiest)
            print(
                "| \(count) | \(share) | \(ms(spread)) | \(ms(pack)) | \(ms(bigSpread)) | \(ms(ledger)) | \(ms(plan)) "
                    + "| \(ms(restart)) | \(ms(storagePlan)) |")
            rows.append((count, spread, ledger, plan))
        }
        if let first = rows.first, let last = rows.last, rows.count > 1 {
            let growth = String(format: "%.1f", last.spread / first.spread)
            let planGrowth = String(format: "%.2f", last.plan / first.plan)
            let verdict = last.spread < 10 ? "met" : "**not met**"
            let total = ms(last.spread + last.ledger)
            print()
            print(
                "From \(first.nodes) to \(last.nodes) nodes a placement decision grows \(growth)x and a compute node's "
                    + "plan \(planGrowth)x; target: a decision under 10 ms at \(last.nodes) nodes: \(verdict) (with the "
                    + "ledger it is made from: \(total) ms).")
        }
    }

    /// The median time of `body` in milliseconds. What it returns is kept, so that no call
    /// is optimized away.
    private func median(_ runs: Int, _ body: () throws -> Int) rethrows -> Double {
        var sink = try body()
        var samples: [Double] = []
        let clock = ContinuousClock()
        for _ in 0..<max(1, runs) {
            let t0 = clock.now
            sink &+= try body()
            let d = clock.now - t0
            samples.append(Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15)
        }
        if sink == Int.min { print(sink) }
        return samples.sorted()[samples.count / 2]
    }

    private func ms(_ value: Double) -> String { String(format: value < 1 ? "%.3f" : "%.2f", value) }
}

/// A catalog of many ready compute nodes and one storage node, with VMs of 256 MiB in
/// clusters of 40 placed over them by the scheduler itself, as a run of creates would.
struct ScaleWorld {
    static let vmMiB = 256
    let records: [NodeRecord]
    let storage: NodeRecord
    let clusters: [VirtualCluster]
    let underlays: [String: String]

    init(nodes count: Int, vms: Int) throws {
        let perNode = (vms + count - 1) / count
        let epoch = Date(timeIntervalSince1970: 0)
        func record(_ name: String, memoryMiB: Int, roles: [NodeRole], underlay: String) -> NodeRecord {
            NodeRecord(
                name: name, initiator: Naming.initiatorIQN(node: name), api: "https://\(underlay):7480",
                capacity: NodeCapacity(node: name, cpus: 64, memoryMiB: memoryMiB),
                accelerator: Accelerator(kind: .kvm, reason: "bench"), version: "bench", startedAt: epoch, roles: roles,
                underlay: underlay)
        }
        records = (0..<count).map { i in
            // Room for a fair share and a half, a little uneven, so ties are not the rule.
            record(
                String(format: "node-%04d", i + 1), memoryMiB: perNode * Self.vmMiB * 3 / 2 + 8192 + (i % 8) * 256,
                roles: [.compute], underlay: "10.0.\(i / 250).\(i % 250 + 1)")
        }
        storage = record("storage", memoryMiB: 65536, roles: [.storage], underlay: "10.1.0.1")
        underlays = Dictionary(uniqueKeysWithValues: (records + [storage]).map { ($0.name, $0.underlay!) })

        let perCluster = max(40, (vms + 249) / 250)
        let addresses = try AddressPlan()
        var views = records.map { NodeView($0, state: .ready, committedMiB: 0, vmCount: 0) }
        let index = Dictionary(uniqueKeysWithValues: views.indices.map { (views[$0].name, $0) })
        var clusters: [VirtualCluster] = []
        var placed = 0
        while placed < vms {
            let size = min(perCluster, vms - placed)
            let spec = ClusterSpec(name: "c\(clusters.count + 1)", image: "bench", vms: size, memoryMiB: Self.vmMiB)
            let placement = try Placement.place(PlacementRequest(spec: spec), on: views)
            var cluster = ClusterLayout.make(
                spec: spec, subnet: clusters.count + 1, node: "", addresses: addresses, now: epoch)
            for i in cluster.vms.indices {
                let node = placement[cluster.vms[i].name]!
                cluster.vms[i].node = node
                views[index[node]!].committedMiB += Self.vmMiB
                views[index[node]!].vmCount += 1
            }
            cluster.state = .running
            clusters.append(cluster)
            placed += size
        }
        self.clusters = clusters
    }

    /// The VMs placed on `node`.
    func share(of node: NodeRecord) -> Int { clusters.reduce(0) { $0 + $1.vms.count { $0.node == node.name } } }

    /// The compute node with the most VMs: the largest share a node plans for.
    var busiest: NodeRecord { records.max { share(of: $0) < share(of: $1) }! }

    /// What the daemon computes before each decision: the ledger and a view of every node.
    func views(excluding cluster: String? = nil) -> [NodeView] {
        let ledger = CommitmentLedger(clusters: clusters, excluding: cluster)
        return records.map { ledger.view(of: $0, state: .ready) }
    }

    func desired(for node: NodeRecord) -> DesiredWorld {
        DesiredWorld(
            node: node.name, roles: node.roles, clusters: clusters, underlays: underlays,
            withSecrets: Set(clusters.map(\.name)), poolRoot: "/srv/pool")
    }

    /// The node with its whole share made: what a settled node lists.
    func observed(by node: NodeRecord) -> ObservedNode {
        var observed = ObservedNode()
        for cluster in clusters {
            if node.has(.storage) {
                for vm in cluster.vms {
                    observed.targets.append(
                        .init(
                            iqn: vm.diskIQN, initiators: [vm.initiator], account: Naming.chapUser(vm: vm.name),
                            file: "/srv/pool/\(vm.diskFile)"))
                }
            }
            let here = cluster.vms.filter { $0.node == node.name }
            guard node.has(.compute), !here.isEmpty else { continue }
            let bridge = cluster.network.bridge
            observed.bridges.insert(bridge)
            observed.dhcp.insert(bridge)
            observed.firewallTables.insert(GuestBoundary.table(bridge: bridge))
            observed.currentFirewalls.insert(bridge)
            let peers = Set(cluster.vms.map(\.node).filter { $0 != node.name }.compactMap { underlays[$0] })
            if !peers.isEmpty {
                observed.overlays.append(
                    .init(name: Naming.overlay(bridge: bridge), vni: cluster.network.vni, peers: peers))
            }
            observed.domains += here.map {
                .init(name: $0.name, cluster: cluster.name, active: true, initiator: $0.initiator)
            }
        }
        return observed
    }
}
