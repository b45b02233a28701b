import Foundation
import Testing

@testable import VCModel

/// The tenant boundary's rules, by value: what a guest of a network may reach and send.
@Suite struct GuestBoundaryTests {
    let now = Date(timeIntervalSince1970: 1_800_000_000)

    func boundary(vms: Int = 2, services: [GuestService] = GuestService.offeredOnEveryNetwork) throws
        -> GuestBoundary
    {
        let c = ClusterLayout.make(
            spec: ClusterSpec(name: "web", image: "i", vms: vms), subnet: 3, node: "n", addresses: try AddressPlan(),
            now: now)
        return GuestBoundary(network: c.network, vms: c.vms, services: services)
    }

    func lines(_ text: String) -> [String] {
        text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
    }

    @Test func hostInputFromTheBridgeIsTheOfferedServicesAndNothingElse() throws {
        let r = lines(try boundary().ruleset)
        let input = Array(r.drop { $0 != "chain input {" }.prefix { $0 != "}" })
        #expect(input.contains("iifname != \"vcbr3\" accept"))
        #expect(input.contains("ip daddr { 255.255.255.255, 10.77.3.1 } udp dport 67 accept comment \"dhcp\""))
        // Replies to what the host opened come before the drop; the drop is last.
        #expect(input.firstIndex(of: "ct state established,related accept")! < input.count - 1)
        #expect(input.contains("ip daddr 10.77.3.1 udp dport 53 accept comment \"dns\""))
        #expect(input.contains("ip daddr 10.77.3.1 tcp dport 53 accept comment \"dns\""))
        // Whatever is not accepted above is dropped: the last rule of the chain.
        #expect(input.last == "drop")
        #expect(!input.contains { $0.contains("3260") || $0.contains("2379") || $0.contains("22 ") })
    }

    @Test func theAllowedSetIsDataAServiceAddedAppearsAsARule() throws {
        let ntp = GuestService(name: "ntp", transport: .udp, port: 123)
        let r = lines(try boundary(services: GuestService.offeredOnEveryNetwork + [ntp]).ruleset)
        #expect(r.contains("ip daddr 10.77.3.1 udp dport 123 accept comment \"ntp\""))
        let none = lines(try boundary(services: []).ruleset)
        let input = Array(none.drop { $0 != "chain input {" }.prefix { $0 != "}" })
        #expect(!input.contains { $0.contains("dport") })
        #expect(input.last == "drop")
    }

    @Test func nothingIsForwardedIntoOrOutOfTheNetwork() throws {
        let r = lines(try boundary().ruleset)
        #expect(r.contains("iifname \"vcbr3\" oifname != \"vcbr3\" drop"))
        #expect(r.contains("oifname \"vcbr3\" iifname != \"vcbr3\" drop"))
    }

    @Test func eachVMPortSendsOnlyFromItsOwnMACAndAddress() throws {
        let b = try boundary()
        let r = lines(b.ruleset)
        for vm in b.vms {
            let tap = Naming.tap(bridge: "vcbr3", index: vm.index)
            #expect(r.contains("iifname \"\(tap)\" goto vm\(vm.index)"))
            let chain = Array(r.drop { $0 != "chain vm\(vm.index) {" }.prefix { $0 != "}" })
            #expect(chain.contains("ether saddr != \(vm.mac) drop"))
            #expect(chain.contains("arp saddr ether != \(vm.mac) drop"))
            #expect(chain.contains("arp saddr ip != { 0.0.0.0, \(vm.ip) } drop"))
            #expect(chain.contains("ip saddr != \(vm.ip) drop"))
            // No DHCP server in a guest; nothing but IPv4 and ARP.
            #expect(chain.contains("udp sport 67 drop"))
            #expect(chain.contains("ether type != { ip, arp } drop"))
            #expect(chain.last == "accept")
            // A DHCP request before the VM has its address is the one 0.0.0.0 packet let through,
            // and it is let through before the address check.
            let dhcp = try #require(chain.firstIndex(of: "ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept"))
            #expect(dhcp < chain.firstIndex(of: "ip saddr != \(vm.ip) drop")!)
        }
    }

    @Test func aPortOfTheNetworkThatNoVMOwnsSendsNothing() throws {
        let r = lines(try boundary().ruleset)
        let prerouting = Array(r.drop { $0 != "chain prerouting {" }.prefix { $0 != "}" })
        // After every VM's own chain, the rest of the network's tap name space is dropped.
        #expect(prerouting.last == "iifname \"vcbr3v*\" drop")
    }

    @Test func loadingReplacesBothTablesAtomicallyAndRemovalToleratesAbsence() throws {
        let b = try boundary()
        let r = lines(b.ruleset)
        // Declare-then-delete first: a second load replaces, it does not add a second copy.
        #expect(Array(r.dropFirst().prefix(4)) == lines(GuestBoundary.deletion(bridge: "vcbr3")))
        #expect(b.table == "peerless_vcbr3")
        #expect(
            lines(GuestBoundary.deletion(bridge: "vcbr3")) == [
                "table inet peerless_vcbr3 {}", "delete table inet peerless_vcbr3",
                "table bridge peerless_vcbr3 {}", "delete table bridge peerless_vcbr3",
            ])
    }

    @Test func tapNamesFitLinuxInterfaceNamesForEveryPrefixAndIndex() throws {
        let plan = try AddressPlan(prefix: "10.77", bridgePrefix: "abcdefg")
        for s in AddressPlan.subnets {
            for i in ClusterSpec.vmRange {
                #expect(Naming.tap(bridge: plan.network(cluster: "c", subnet: s).bridge, index: i).utf8.count <= 15)
            }
        }
        #expect(throws: ModelError.self) { try AddressPlan(prefix: "10.77", bridgePrefix: "abcdefgh") }
    }
}
