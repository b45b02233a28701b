import Foundation
import Testing

@testable import VCModel

@Suite struct ClusterSpecTests {
    @Test func aSensibleSpecIsValid() throws {
        try ClusterSpec(name: "demo", image: "tiny", vms: 3).validate()
    }

    @Test(arguments: [0, -1, 241, 100_000])
    func refusesZeroNegativeOrAbsurdVMCounts(_ vms: Int) {
        #expect(throws: ModelError.outOfRange(what: "the number of VMs", value: vms, range: ClusterSpec.vmRange)) {
            try ClusterSpec(name: "demo", image: "tiny", vms: vms).validate()
        }
    }

    @Test(arguments: [0, -5, 32, 2_000_000])
    func refusesAbsurdMemory(_ mib: Int) {
        #expect(throws: ModelError.self) {
            try ClusterSpec(name: "demo", image: "tiny", vms: 1, memoryMiB: mib).validate()
        }
    }

    @Test func refusesZeroVCPUs() {
        #expect(throws: ModelError.self) { try ClusterSpec(name: "demo", image: "tiny", vms: 1, vcpus: 0).validate() }
    }

    @Test func refusesMultiLineSSHKeys() {
        #expect(throws: ModelError.self) {
            try ClusterSpec(name: "demo", image: "tiny", vms: 1, sshKeys: ["a\nb"]).validate()
        }
    }

    @Test func admitsWhatFitsNextToCommittedMemory() throws {
        let node = NodeCapacity(node: "n1", cpus: 2, memoryMiB: 8192)
        try node.admit(ClusterSpec(name: "a", image: "i", vms: 4, memoryMiB: 1024), committedMiB: 2048)
    }

    @Test func refusesMoreMemoryThanTheNodeHasLeft() {
        let node = NodeCapacity(node: "n1", cpus: 2, memoryMiB: 8192)
        let spec = ClusterSpec(name: "a", image: "i", vms: 8, memoryMiB: 1024)
        #expect(throws: ModelError.insufficientMemory(neededMiB: 8192, availableMiB: 8192 - 1024, node: "n1")) {
            try node.admit(spec, committedMiB: 0)
        }
        #expect {
            try node.admit(spec, committedMiB: 0)
        } throws: { error in
            "\(error)".contains("needs 8192 MiB") && "\(error)".contains("fewer VMs")
        }
    }

    @Test func refusesMoreVCPUsThanTheNodeHas() {
        let node = NodeCapacity(node: "n1", cpus: 2, memoryMiB: 8192)
        #expect(throws: ModelError.tooManyVCPUs(requested: 3, nodeCPUs: 2, node: "n1")) {
            try node.admit(ClusterSpec(name: "a", image: "i", vms: 1, vcpus: 3), committedMiB: 0)
        }
    }
}

@Suite struct LayoutTests {
    let now = Date(timeIntervalSince1970: 1_800_000_000)

    @Test func parsesTwoOctetPrefixesOnly() throws {
        _ = try AddressPlan(prefix: "10.77")
        #expect(throws: ModelError.self) { try AddressPlan(prefix: "10.77.1") }
        #expect(throws: ModelError.self) { try AddressPlan(prefix: "10.300") }
    }

    @Test func firstFreeSubnetSkipsUsedOnes() {
        #expect(AddressPlan.firstFree(used: []) == 1)
        #expect(AddressPlan.firstFree(used: [1, 2, 4]) == 3)
        #expect(AddressPlan.firstFree(used: Set(AddressPlan.subnets)) == nil)
    }

    @Test func layoutGivesEveryVMItsOwnNameAddressDiskAndTarget() throws {
        let spec = ClusterSpec(name: "web", image: "tiny", vms: 3)
        let c = ClusterLayout.make(spec: spec, subnet: 7, node: "n1", addresses: try AddressPlan(), now: now)
        #expect(c.state == .creating)
        #expect(c.network.cidr == "10.77.7.0/24")
        #expect(c.network.gateway == "10.77.7.1")
        #expect(c.network.bridge == "vcbr7")
        #expect(c.network.domain == "web.vc")
        #expect(c.vms.map(\.name) == ["web-1", "web-2", "web-3"])
        #expect(c.vms.map(\.ip) == ["10.77.7.11", "10.77.7.12", "10.77.7.13"])
        #expect(Set(c.vms.map(\.mac)).count == 3)
        #expect(c.vms[0].diskFile == "disks/web/web-1.raw")
        #expect(c.vms[0].saveFile == "saves/web/web-1.save")
        #expect(c.vms[0].diskIQN == "iqn.2026-11.dev.peerless:disk.web-1")
        #expect(c.vms.allSatisfy { $0.node == "n1" })
    }

    /// Cluster "a" on subnet 1 of node "n".
    func cluster(vms: Int) throws -> VirtualCluster {
        ClusterLayout.make(
            spec: ClusterSpec(name: "a", image: "i", vms: vms), subnet: 1, node: "n", addresses: try AddressPlan(),
            now: now)
    }

    @Test func createPlanMakesNetworkFirstThenEachVMInOrder() throws {
        let c = try cluster(vms: 2)
        let plan = ClusterPlan.create(c)
        // The boundary exists before the bridge: no guest is ever on an open network. The
        // tunnel to the other hosting nodes comes with the bridge, before dnsmasq serves.
        #expect(plan.shared == [.firewall, .bridge, .overlay, .dhcp])
        #expect(
            plan.machines[1] == [
                .snapshot(vm: "a-2"), .export(vm: "a-2"), .verify(vm: "a-2"), .secret(vm: "a-2"), .define(vm: "a-2"),
                .start(vm: "a-2"),
            ])
        // Every VM starts paused; all are released together at the end.
        #expect(plan.final == [.release(vm: "a-1"), .release(vm: "a-2")])
    }

    @Test func teardownUndoesTheCreateBackwardsWithoutChecks() throws {
        let c = try cluster(vms: 2)
        let plan = ClusterPlan.teardown(c)
        #expect(plan.shared == [.dhcp, .overlay, .bridge, .firewall])
        #expect(
            plan.machines[0] == [
                .start(vm: "a-1"), .define(vm: "a-1"), .secret(vm: "a-1"), .export(vm: "a-1"), .snapshot(vm: "a-1"),
            ])
    }

    @Test func resumeRemakesWhatARestartLosesBeforeRestoring() throws {
        let c = try cluster(vms: 1)
        #expect(ClusterPlan.resume(c).shared == [.firewall, .bridge, .overlay, .dhcp])
        // Defined again: the VM may be placed on another node now, with a new initiator name.
        #expect(
            ClusterPlan.resume(c).machines[0] == [
                .export(vm: "a-1"), .verify(vm: "a-1"), .secret(vm: "a-1"), .define(vm: "a-1"), .start(vm: "a-1"),
            ])
        #expect(ClusterPlan.resume(c).final == [.release(vm: "a-1")])
        #expect(ClusterPlan.teardown(c).final.isEmpty)
        #expect(ClusterPlan.suspend(c).machines[0] == [.save(vm: "a-1")])
    }

    @Test func anInterruptedCreateIsUndoneAndEverythingElseFinished() {
        func op(_ k: ClusterOperation.Kind) -> ClusterOperation {
            ClusterOperation(id: "x", kind: k, cluster: "c", node: "n", startedAt: now)
        }
        #expect(op(.create).recovery == .rollBack)
        #expect(op(.destroy).recovery == .rollForward)
        #expect(op(.suspend).recovery == .rollForward)
        #expect(op(.resume).recovery == .rollForward)
    }
}
