import Foundation
import Testing

@testable import VCModel
@testable import VCNetwork

/// The pure parts of running one cluster over several nodes: incarnation names, where a
/// step runs and how it travels, node addresses on a cluster network, a saved definition
/// moved to another node, and the VXLAN forwarding entries.
@Suite struct SeveralNodesModelTests {
    @Test func everyIncarnationHasItsOwnInitiatorName() {
        let a = Naming.initiatorIQN(node: "n2", vm: "web-3", generation: 7)
        #expect(a == "iqn.2026-11.dev.peerless:node.n2.vm.web-3.g7")
        #expect(a != Naming.initiatorIQN(node: "n2", vm: "web-3", generation: 8))
        #expect(a != Naming.initiatorIQN(node: "n1", vm: "web-3", generation: 7))
        var vm = VirtualMachine(
            name: "web-3", index: 3, mac: "", ip: "", node: "n2", generation: 7, diskIQN: "", diskFile: "",
            saveFile: "")
        #expect(vm.initiator == a)
        vm.generation += 1
        #expect(vm.initiator != a)
    }

    @Test func aRecordWithoutGenerationOrNodeAddressesDecodes() throws {
        let json = """
            {"name":"a-1","index":1,"mac":"m","ip":"i","node":"n","diskIQN":"d","diskFile":"f","saveFile":"s"}
            """
        let vm = try JSONDecoder().decode(VirtualMachine.self, from: Data(json.utf8))
        // Made before generations: its running incarnation keeps the node's name.
        #expect(vm.generation == 0 && vm.initiator == Naming.initiatorIQN(node: "n"))
        let net = """
            {"subnet":4,"bridge":"vcbr4","cidr":"10.77.4.0/24","gateway":"10.77.4.1","prefixLength":24,"domain":"a.vc"}
            """
        let network = try JSONDecoder().decode(ClusterNetwork.self, from: Data(net.utf8))
        #expect(network.vni == AddressPlan.vni(subnet: 4))
        #expect(network.nodeAddresses.isEmpty && network.nameServers == ["10.77.4.1"])
    }

    @Test(arguments: [
        Step.firewall, .bridge, .overlay, .dhcp, .snapshot(vm: "a-1"), .export(vm: "a-1"), .verify(vm: "a-1"),
        .secret(vm: "a-1"), .define(vm: "a-1"), .start(vm: "a-1"), .release(vm: "a-1"), .save(vm: "a-1"),
    ])
    func aStepTravelsAsItsDescription(_ step: Step) {
        #expect(Step(description: step.description) == step)
    }

    @Test func unknownStepsAreNotGuessed() {
        #expect(Step(description: "reboot a-1") == nil)
        #expect(Step(description: "snapshot") == nil)
        #expect(Step(description: "bridge extra") == nil)
    }

    @Test func disksOnTheStorageNodeVMsOnTheirNodeNetworksOnEveryHost() {
        #expect(Step.snapshot(vm: "a").site == .storage && Step.export(vm: "a").site == .storage)
        for step in [Step.verify(vm: "a"), .secret(vm: "a"), .define(vm: "a"), .start(vm: "a"), .save(vm: "a")] {
            #expect(step.site == .vmHost)
        }
        for step in [Step.firewall, .bridge, .overlay, .dhcp] { #expect(step.site == .everyHost) }
    }

    @Test func hostingNodesGetDistinctAddressesOutsideTheVMsAndTheGateway() throws {
        let plan = try AddressPlan()
        let nodes = Set((1...20).map { "n\($0)" })
        let given = try plan.nodeAddresses(subnet: 5, nodes: nodes, keeping: [:])
        #expect(Set(given.values).count == 20)
        let vmAddresses = Set((1...ClusterSpec.vmRange.upperBound).map { plan.address(subnet: 5, index: $0) })
        #expect(given.values.allSatisfy { !vmAddresses.contains($0) && $0 != "10.77.5.1" && $0.hasPrefix("10.77.5.") })
        // A node that keeps hosting keeps its address; one that left gives its up.
        let next = try plan.nodeAddresses(subnet: 5, nodes: ["n3", "n99"], keeping: given)
        #expect(next["n3"] == given["n3"] && next.count == 2 && next["n1"] == nil)
        #expect(next["n99"] != next["n3"])
        #expect(throws: ModelError.self) {
            try plan.nodeAddresses(
                subnet: 5, nodes: Set((1...(AddressPlan.nodeHosts.count + 1)).map { "m\($0)" }), keeping: [:])
        }
    }

    @Test func dhcpServesOnTheNodesOwnAddressAndNamesEveryNode() {
        var network = ClusterNetwork(
            subnet: 5, bridge: "vcbr5", cidr: "10.77.5.0/24", gateway: "10.77.5.1", prefixLength: 24, domain: "a.vc")
        network.nodeAddresses = ["n1": "10.77.5.2", "n2": "10.77.5.3"]
        let table = DHCPTable(
            network: network, vms: [], runDirectory: "/r", serviceAddress: network.serviceAddress(of: "n2"), mtu: 1450)
        #expect(table.configuration.contains("listen-address=10.77.5.3\n"))
        #expect(table.configuration.contains("dhcp-option=option:dns-server,10.77.5.2,10.77.5.3\n"))
        #expect(table.configuration.contains("dhcp-option-force=26,1450\n"))
        let boundary = GuestBoundary(network: network, vms: [], serviceAddress: "10.77.5.3")
        #expect(boundary.ruleset.contains("ip daddr 10.77.5.3 udp dport 53 accept"))
        #expect(!boundary.ruleset.contains("10.77.5.1"))
    }

    @Test func aSavedDefinitionIsRetargetedAtTheNewPortalAndIncarnation() {
        let saved = """
            <domain type='qemu'>
              <name>a-1</name>
              <devices>
                <disk type='network' device='disk'>
                  <source protocol='iscsi' name='iqn.2026-11.dev.peerless:disk.a-1/1'>
                    <host name='127.0.0.1' port='3260'/>
                    <auth username='peerless.vm.a-1'>
                      <secret type='iscsi' usage='peerless-disk-a-1'/>
                    </auth>
                    <initiator>
                      <iqn name='iqn.2026-11.dev.peerless:node.n1.vm.a-1.g1'/>
                    </initiator>
                  </source>
                </disk>
                <graphics type='vnc' port='5900'/>
              </devices>
            </domain>
            """
        let moved = SavedDefinition.retarget(
            saved, portal: ISCSIPortal(host: "10.99.0.10", port: 3261),
            initiator: "iqn.2026-11.dev.peerless:node.n2.vm.a-1.g2")
        #expect(moved.contains("<host name='10.99.0.10' port='3261'/>"))
        #expect(moved.contains("<iqn name='iqn.2026-11.dev.peerless:node.n2.vm.a-1.g2'/>"))
        #expect(!moved.contains("g1"))
        // A port attribute outside the disk's host element stays.
        #expect(moved.contains("<graphics type='vnc' port='5900'/>"))
        #expect(moved.contains("name='iqn.2026-11.dev.peerless:disk.a-1/1'"))
    }

    @Test func floodEntriesAreTheAllZeroDestinations() {
        let fdb = """
            00:00:00:00:00:00 dst 10.99.0.12 self permanent
            00:00:00:00:00:00 dst 10.99.0.13 self permanent
            52:54:00:77:05:0b dst 10.99.0.12 self
            be:ef:00:00:00:01 master vcbr5 permanent
            """
        #expect(ClusterOverlay.floodPeers(fdb: fdb) == ["10.99.0.12", "10.99.0.13"])
    }
}

@Suite struct DomainUUIDTests {
    @Test func theSameOnEveryNodeAndNewForANewCluster() {
        let a = Naming.domainUUID(cluster: "web", vm: "web-1", createdAt: 1000)
        #expect(a == Naming.domainUUID(cluster: "web", vm: "web-1", createdAt: 1000))
        #expect(a != Naming.domainUUID(cluster: "web", vm: "web-2", createdAt: 1000))
        #expect(a != Naming.domainUUID(cluster: "web", vm: "web-1", createdAt: 1001))
        let parts = a.split(separator: "-").map(\.count)
        #expect(parts == [8, 4, 4, 4, 12], "\(a)")
        #expect(a.dropFirst(14).first == "8")
    }
}
