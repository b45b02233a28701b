import Testing

@testable import VCModel

/// The gateway address of a network that spans nodes: held by the node named in the
/// cluster's gateway key, claimed by a hosting node when nobody holds it, given up by a
/// node that hosts nothing of the cluster any more or has lost its lease.
@Suite struct GatewayElectionTests {
    let spanning = ClusterNetwork(
        subnet: 4, bridge: "vcbr4", cidr: "10.77.4.0/24", gateway: "10.77.4.1", prefixLength: 24, domain: "a.vc",
        nodeAddresses: ["n1": "10.77.4.2", "n2": "10.77.4.3"])

    func decide(hosting: Bool = true, holder: String?, lease: Bool = true, node: String = "n1")
        -> GatewayElection.Action
    {
        GatewayElection.decide(network: spanning, node: node, hosting: hosting, holder: holder, leaseHeld: lease)
    }

    @Test func aSingleNodeNetworkHasNothingToElect() {
        var single = spanning
        single.nodeAddresses = [:]
        for holder in [nil, "n1", "n2"] {
            #expect(
                GatewayElection.decide(network: single, node: "n1", hosting: true, holder: holder, leaseHeld: true)
                    == .none)
        }
    }

    @Test func aHostingNodeClaimsAFreeGatewayAndKeepsItsOwn() {
        #expect(decide(holder: nil) == .campaign)
        #expect(decide(holder: "n1") == .hold)
    }

    @Test func anotherNodesGatewayIsNeverHeldHere() {
        #expect(decide(holder: "n2") == .release)
        #expect(decide(hosting: false, holder: "n2") == .release)
    }

    @Test func aNodeThatHostsNothingOfTheClusterNeitherClaimsNorKeeps() {
        #expect(decide(hosting: false, holder: nil) == .release)
        #expect(decide(hosting: false, holder: "n1") == .resign)
    }

    @Test func withoutALeaseTheAddressIsGivenUpWhateverTheKeySays() {
        // The key it may still name expires with the lease, and another node may hold
        // the address by then: two holders on one segment is what must never happen.
        for holder in [nil, "n1", "n2"] { #expect(decide(holder: holder, lease: false) == .release) }
    }

    @Test func atMostOneNodeHoldsTheAddressForAnyKey() {
        for holder in [nil, "n1", "n2", "n3"] {
            let holding = ["n1", "n2", "n3"].filter { decide(holder: holder, node: $0) == .hold }
            #expect(holding.count <= 1)
            #expect(holding.first == holder || holding.isEmpty)
        }
    }
}
