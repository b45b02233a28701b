import Foundation
import Testing

@testable import VCModel

@Suite struct PlacementTests {
    /// A node with `free` MiB to give (no reserve, nothing committed unless told).
    static func node(
        _ name: String, free: Int = 4096, cpus: Int = 4, state: NodeState = .ready, roles: [NodeRole] = [.compute],
        committed: Int = 0, vms: Int = 0
    ) -> NodeView {
        NodeView(
            name: name, state: state, roles: roles, cpus: cpus, memoryMiB: free + committed, reservedMiB: 0,
            committedMiB: committed, vmCount: vms)
    }

    static func request(
        _ count: Int, memory: Int = 512, vcpus: Int = 1, strategy: PlacementStrategy = .spread, pin: String? = nil,
        keep: [String: String] = [:], cluster: String = "c"
    ) -> PlacementRequest {
        PlacementRequest(
            cluster: cluster, vms: (1...count).map { "\(cluster)-\($0)" }, memoryMiB: memory, vcpus: vcpus,
            strategy: strategy, pin: pin, keep: keep)
    }

    static func perNode(_ placement: [String: String]) -> [String: Int] {
        placement.values.reduce(into: [:]) { $0[$1, default: 0] += 1 }
    }

    // MARK: spread

    @Test func spreadPutsFourVMsOnThreeEqualNodesTwoOneOne() throws {
        let nodes = ["a", "b", "c"].map { Self.node($0) }
        let placement = try Placement.place(Self.request(4), on: nodes)
        #expect(placement == ["c-1": "a", "c-2": "b", "c-3": "c", "c-4": "a"])
    }

    @Test func spreadPicksTheNodeWithTheMostFreeMemory() throws {
        let nodes = [Self.node("a", free: 1000), Self.node("b", free: 3000), Self.node("c", free: 2000)]
        #expect(try Placement.place(Self.request(1), on: nodes) == ["c-1": "b"])
    }

    @Test func spreadCountsEachPlacedVMAgainstItsNode() throws {
        // b has 3000, c 2000: b, then b (2488 > 2000), then c (1976 < 2000), then b, ...
        let nodes = [Self.node("b", free: 3000), Self.node("c", free: 2000)]
        let placement = try Placement.place(Self.request(4, memory: 512), on: nodes)
        #expect(placement == ["c-1": "b", "c-2": "b", "c-3": "c", "c-4": "b"])
    }

    @Test func spreadBreaksTiesByFewerVMsThenByName() throws {
        let nodes = [Self.node("a", vms: 3), Self.node("b", vms: 1), Self.node("c", vms: 1)]
        #expect(try Placement.place(Self.request(1), on: nodes) == ["c-1": "b"])
    }

    // MARK: pack

    @Test func packFillsTheFullestNodeThatStillFitsFirst() throws {
        let nodes = [Self.node("a", free: 4096), Self.node("b", free: 1100), Self.node("c", free: 300)]
        let placement = try Placement.place(Self.request(4, strategy: .pack), on: nodes)
        // c cannot take one; b takes two, then a the rest.
        #expect(placement == ["c-1": "b", "c-2": "b", "c-3": "a", "c-4": "a"])
    }

    @Test func packBreaksTiesByName() throws {
        let nodes = [Self.node("b", free: 1024), Self.node("a", free: 1024)]
        let placement = try Placement.place(Self.request(3, strategy: .pack), on: nodes)
        #expect(placement == ["c-1": "a", "c-2": "a", "c-3": "b"])
    }

    // MARK: who takes VMs

    @Test func onlyReadyComputeNodesTakeVMs() throws {
        let nodes = [
            Self.node("cordoned", free: 9000, state: .cordoned), Self.node("dead", free: 9000, state: .dead),
            Self.node("storage", free: 9000, roles: [.storage]),
            Self.node("ok", free: 2048, roles: [.compute, .storage]),
        ]
        #expect(Self.perNode(try Placement.place(Self.request(3), on: nodes)) == ["ok": 3])
    }

    @Test func nodesWithTooFewCPUsAreLeftOut() throws {
        let nodes = [Self.node("small", free: 9000, cpus: 2), Self.node("big", free: 2048, cpus: 8)]
        #expect(Self.perNode(try Placement.place(Self.request(2, vcpus: 4), on: nodes)) == ["big": 2])
    }

    @Test func refusesVCPUsBeyondEveryNode() {
        let nodes = [Self.node("a", cpus: 2), Self.node("b", cpus: 4), Self.node("huge", cpus: 64, state: .dead)]
        #expect(throws: ModelError.vcpusExceedEveryNode(cluster: "c", vcpus: 8, mostCPUs: 4)) {
            try Placement.place(Self.request(1, vcpus: 8), on: nodes)
        }
        let text = "\(ModelError.vcpusExceedEveryNode(cluster: "c", vcpus: 8, mostCPUs: 4))"
        #expect(
            text
                == "cluster 'c' asks for 8 vCPUs per VM, more than any ready compute node has (at most 4); use --vcpus 4 or less"
        )
    }

    @Test func refusesWhenNoComputeNodeIsReady() {
        let nodes = [
            Self.node("a", state: .cordoned), Self.node("b", state: .dead), Self.node("s", roles: [.storage]),
        ]
        #expect(throws: ModelError.noReadyComputeNode(cordoned: ["a"], dead: ["b"], withoutCompute: ["s"])) {
            try Placement.place(Self.request(1), on: nodes)
        }
        let text = "\(ModelError.noReadyComputeNode(cordoned: ["a"], dead: ["b"], withoutCompute: ["s"]))"
        #expect(
            text
                == "no compute node is ready to take VMs (cordoned: a; dead: b; not compute: s); uncordon one or start vcd on a compute node"
        )
        #expect(throws: ModelError.noReadyComputeNode(cordoned: [], dead: [], withoutCompute: [])) {
            try Placement.place(Self.request(1), on: [])
        }
    }

    // MARK: does not fit

    @Test func refusesWhatDoesNotFitAndSaysWhatIsFree() {
        let nodes = [Self.node("a", free: 100), Self.node("b", free: 300), Self.node("c", free: 200)]
        let expected = ModelError.clusterDoesNotFit(
            cluster: "c", vms: 4, memoryMiB: 512, freeMiB: [300, 200, 100], nodes: 3, minCPUs: nil, hostLimit: nil)
        #expect(throws: expected) { try Placement.place(Self.request(4), on: nodes) }
        #expect(
            "\(expected)"
                == "cluster 'c' does not fit: needs 4 × 512 MiB; the ready compute nodes have 300, 200 and 100 MiB free; use fewer VMs or less --memory, or free a node"
        )
    }

    @Test func refusesWhenOnlyTheLastVMsDoNotFit() throws {
        // Two VMs fit on each node, the fifth nowhere: nothing is placed half.
        let nodes = [Self.node("a", free: 1024), Self.node("b", free: 1024)]
        #expect(throws: ModelError.self) { try Placement.place(Self.request(5), on: nodes) }
        #expect(try Placement.place(Self.request(4), on: nodes).count == 4)
    }

    @Test func manyNodesShowTheLargestFreeFirst() {
        let nodes = (1...1000).map { Self.node("n\($0)", free: $0) }
        #expect {
            try Placement.place(Self.request(2, memory: 1024), on: nodes)
        } throws: { error in
            "\(error)"
                == "cluster 'c' does not fit: needs 2 × 1024 MiB; the 1000 ready compute nodes have 1000, 999, 998, … MiB free; use fewer VMs or less --memory, or free a node"
        }
    }

    @Test func oneNodeIsNamedInTheSingular() {
        let text =
            "\(ModelError.clusterDoesNotFit(cluster: "c", vms: 2, memoryMiB: 512, freeMiB: [-20], nodes: 1, minCPUs: 4, hostLimit: nil))"
        #expect(text.contains("the only ready compute node with 4 or more CPUs has 0 MiB free"))
    }

    @Test func aNodeThatPromisedTooMuchHasNothingFree() {
        let over = NodeView(
            name: "over", state: .ready, roles: [.compute], cpus: 4, memoryMiB: 4096, reservedMiB: 512,
            committedMiB: 4000, vmCount: 8)
        #expect(over.freeMiB == -416)
        #expect(throws: ModelError.self) { try Placement.place(Self.request(1), on: [over]) }
    }

    // MARK: pin

    @Test func aPinPutsEveryVMOnItsNode() throws {
        let nodes = [Self.node("a", free: 9000), Self.node("b", free: 2048)]
        #expect(Self.perNode(try Placement.place(Self.request(4, pin: "b"), on: nodes)) == ["b": 4])
    }

    @Test func refusesAPinToAnUnknownNode() {
        let nodes = [Self.node("b"), Self.node("a")]
        #expect(throws: ModelError.unknownNode(name: "x", known: ["a", "b"])) {
            try Placement.place(Self.request(1, pin: "x"), on: nodes)
        }
        #expect("\(ModelError.unknownNode(name: "x", known: ["a", "b"]))" == "no node named 'x'; known nodes: a and b")
    }

    @Test func refusesAPinToACordonedOrDeadOrStorageOnlyNode() {
        let nodes = [
            Self.node("c", state: .cordoned), Self.node("d", state: .dead), Self.node("s", roles: [.storage]),
            Self.node("ok"),
        ]
        #expect(throws: ModelError.nodeNotReady(name: "c", state: .cordoned)) {
            try Placement.place(Self.request(1, pin: "c"), on: nodes)
        }
        #expect(throws: ModelError.nodeNotReady(name: "d", state: .dead)) {
            try Placement.place(Self.request(1, pin: "d"), on: nodes)
        }
        #expect(throws: ModelError.nodeWithoutCompute(name: "s", roles: [.storage])) {
            try Placement.place(Self.request(1, pin: "s"), on: nodes)
        }
        #expect("\(ModelError.nodeNotReady(name: "c", state: .cordoned))".contains("uncordon it or pin another node"))
        #expect("\(ModelError.nodeNotReady(name: "d", state: .dead))".contains("node 'd' is dead"))
    }

    @Test func refusesAPinnedNodeWithoutTheMemoryOrCPUs() {
        let nodes = [Self.node("a", free: 9000), Self.node("b", free: 1000, cpus: 2)]
        #expect(throws: ModelError.insufficientMemory(neededMiB: 2048, availableMiB: 1000, node: "b")) {
            try Placement.place(Self.request(4, pin: "b"), on: nodes)
        }
        #expect(throws: ModelError.tooManyVCPUs(requested: 4, nodeCPUs: 2, node: "b")) {
            try Placement.place(Self.request(1, vcpus: 4, pin: "b"), on: nodes)
        }
    }

    // MARK: hosting nodes per cluster

    @Test func aClusterNeverSpansMoreNodesThanItsNetworkHasAddressesFor() throws {
        let nodes = (1...100).map { Self.node("n\($0)") }
        let placement = try Placement.place(Self.request(200, memory: 64), on: nodes)
        #expect(placement.count == 200)
        #expect(Set(placement.values).count == AddressPlan.nodeHosts.count)
    }

    @Test func theHostCapSaysSoWhenItIsWhatStopsTheCluster() {
        let nodes = (1...4).map { Self.node("n\($0)", free: 1024) }
        #expect {
            try Placement.place(Self.request(5), on: nodes, hostLimit: 2)
        } throws: { error in
            error as? ModelError
                == .clusterDoesNotFit(
                    cluster: "c", vms: 5, memoryMiB: 512, freeMiB: [1024, 1024, 1024], nodes: 4, minCPUs: nil,
                    hostLimit: 2)
                && "\(error)".contains("; one cluster spans at most 2 nodes;")
        }
    }

    // MARK: keeping placements

    @Test func keptVMsStayAndCountAgainstTheirNode() throws {
        let nodes = [Self.node("a", free: 1024), Self.node("b", free: 1024)]
        let placement = try Placement.place(Self.request(3, keep: ["c-1": "a", "c-2": "a"]), on: nodes)
        #expect(placement == ["c-1": "a", "c-2": "a", "c-3": "b"])
    }

    @Test func aCordonedNodeKeepsItsVMsButADeadOneDoesNot() throws {
        let nodes = [Self.node("a", state: .cordoned), Self.node("b", state: .dead), Self.node("c")]
        let placement = try Placement.place(Self.request(2, keep: ["c-1": "a", "c-2": "b"]), on: nodes)
        #expect(placement == ["c-1": "a", "c-2": "c"])
    }

    @Test func aKeptVMThatNoLongerFitsIsPlacedAnew() throws {
        let nodes = [Self.node("a", free: 600), Self.node("b", free: 4096)]
        let placement = try Placement.place(
            Self.request(2, keep: ["c-1": "a", "c-2": "a", "c-3": "gone"]), on: nodes)
        #expect(placement == ["c-1": "a", "c-2": "b"])
    }

    @Test func withAPinOnlyVMsOnThePinnedNodeAreKept() throws {
        let nodes = [Self.node("a"), Self.node("b")]
        let placement = try Placement.place(Self.request(2, pin: "b", keep: ["c-1": "a", "c-2": "b"]), on: nodes)
        #expect(placement == ["c-1": "b", "c-2": "b"])
    }

    // MARK: determinism and speed

    @Test func theSameNodesInAnyOrderGiveTheSamePlacement() throws {
        var generator = SplitMix(seed: 7)
        let nodes = (1...50).map { Self.node("n\($0)", free: 1024 * (1 + $0 % 4), vms: $0 % 3) }
        for strategy in PlacementStrategy.allCases {
            let first = try Placement.place(Self.request(40, strategy: strategy), on: nodes)
            for _ in 0..<5 {
                #expect(
                    try Placement.place(Self.request(40, strategy: strategy), on: nodes.shuffled(using: &generator))
                        == first)
            }
        }
    }

    @Test func aNameListedTwiceCountsOnce() throws {
        let nodes = [Self.node("a", free: 512), Self.node("a", free: 9000), Self.node("b", free: 1024)]
        #expect(Self.perNode(try Placement.place(Self.request(3), on: nodes)) == ["a": 1, "b": 2])
    }

    @Test func anEmptyRequestPlacesNothing() throws {
        let request = PlacementRequest(cluster: "c", vms: [], memoryMiB: 512, vcpus: 1, pin: "nowhere")
        #expect(try Placement.place(request, on: []) == [:])
    }

    @Test func aRequestFromASpecNamesItsVMsAndTakesItsStrategyAndPin() {
        let spec = ClusterSpec(
            name: "demo", image: "i", vms: 3, vcpus: 2, memoryMiB: 1024, placement: .pack, node: "n1")
        let request = PlacementRequest(spec: spec)
        #expect(request.vms == ["demo-1", "demo-2", "demo-3"])
        #expect(request.strategy == .pack && request.pin == "n1" && request.memoryMiB == 1024 && request.vcpus == 2)
        #expect(PlacementRequest(spec: ClusterSpec(name: "d", image: "i", vms: 1)).strategy == .spread)
    }

    @Test func twoHundredVMsOverAThousandNodesIsQuick() throws {
        let nodes = (1...1000).map { Self.node("node-\($0)", free: 65536 - ($0 % 7) * 1024, vms: $0 % 5) }
        for strategy in PlacementStrategy.allCases {
            let request = Self.request(200, memory: 1024, strategy: strategy)
            let clock = ContinuousClock()
            var placement: [String: String] = [:]
            let elapsed = try clock.measure { placement = try Placement.place(request, on: nodes) }
            #expect(placement.count == 200)
            // The release build takes well under 10 ms (bench/scale.sh); a debug build is slower.
            #expect(elapsed < .milliseconds(200), "\(strategy): \(elapsed)")
        }
    }

    // MARK: commitment ledger

    static func cluster(_ name: String, state: ClusterState, memory: Int, nodes: [String]) -> VirtualCluster {
        let spec = ClusterSpec(name: name, image: "i", vms: nodes.count, memoryMiB: memory)
        let vms = nodes.enumerated().map { i, node in
            VirtualMachine(
                name: "\(name)-\(i + 1)", index: i + 1, mac: "", ip: "", node: node, diskIQN: "", diskFile: "",
                saveFile: "")
        }
        let network = ClusterNetwork(subnet: 1, bridge: "vcbr1", cidr: "", gateway: "", prefixLength: 24, domain: "")
        let epoch = Date(timeIntervalSince1970: 0)
        return VirtualCluster(spec: spec, state: state, network: network, vms: vms, createdAt: epoch, updatedAt: epoch)
    }

    @Test func everyStateButSuspendedCommitsItsVMsMemoryOnTheirNodes() {
        for state in ClusterState.allCases {
            let ledger = CommitmentLedger(clusters: [
                Self.cluster("x", state: state, memory: 512, nodes: ["a", "a", "b"])
            ])
            if state == .suspended {
                #expect(ledger.committedMiB.isEmpty && ledger.vmCount.isEmpty)
            } else {
                #expect(ledger.committedMiB == ["a": 1024, "b": 512], "\(state)")
                #expect(ledger.vmCount == ["a": 2, "b": 1])
            }
        }
    }

    @Test func theLedgerAddsClustersAndLeavesOneOut() {
        let clusters = [
            Self.cluster("x", state: .running, memory: 512, nodes: ["a", "b"]),
            Self.cluster("y", state: .failed, memory: 1024, nodes: ["a"]),
            Self.cluster("z", state: .creating, memory: 256, nodes: ["b", "c"]),
        ]
        #expect(CommitmentLedger(clusters: clusters).committedMiB == ["a": 1536, "b": 768, "c": 256])
        let without = CommitmentLedger(clusters: clusters, excluding: "x")
        #expect(without.committedMiB == ["a": 1024, "b": 256, "c": 256])
        #expect(without.committedMiB(of: "nowhere") == 0)
        #expect(CommitmentLedger.commitment(of: clusters[2]) == ["b": 256, "c": 256])
        #expect(CommitmentLedger.commitment(of: Self.cluster("s", state: .suspended, memory: 64, nodes: ["a"])) == [:])
    }

    @Test func aViewOfANodeRecordTakesItsCapacityReserveAndPromises() throws {
        let record = NodeRecord(
            name: "n1", initiator: "", api: "", capacity: NodeCapacity(node: "n1", cpus: 8, memoryMiB: 16384),
            accelerator: Accelerator(kind: .tcg, reason: ""), version: "", startedAt: Date(timeIntervalSince1970: 0),
            roles: [.compute])
        let ledger = CommitmentLedger(clusters: [Self.cluster("x", state: .running, memory: 1024, nodes: ["n1", "n1"])])
        let view = ledger.view(of: record, state: .ready)
        #expect(
            view
                == NodeView(
                    name: "n1", state: .ready, roles: [.compute], cpus: 8, memoryMiB: 16384, reservedMiB: 2048,
                    committedMiB: 2048, vmCount: 2))
        #expect(view.freeMiB == 16384 - 2048 - 2048)
        // Placed with what it promised already counted.
        #expect(throws: ModelError.self) { try Placement.place(Self.request(13, memory: 1024), on: [view]) }
        #expect(try Placement.place(Self.request(12, memory: 1024), on: [view]).count == 12)
    }
}

/// A seeded generator, so shuffles are the same on every run.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
