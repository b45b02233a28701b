import Testing

@testable import VCModel

@Suite struct NamingTests {
    @Test func vmNamesAreClusterDashIndex() {
        #expect(Naming.vmName(cluster: "demo", index: 3) == "demo-3")
    }

    @Test func iqnsCarryTheProjectPrefixAndTheirRole() {
        #expect(Naming.diskIQN(vm: "demo-1") == "iqn.2026-11.dev.peerless:disk.demo-1")
        #expect(Naming.initiatorIQN(node: "n1") == "iqn.2026-11.dev.peerless:node.n1")
        #expect(Naming.importIQN(image: "tiny") == "iqn.2026-11.dev.peerless:import.tiny")
    }

    @Test func macsAreTwoDigitHexAndUniquePerSubnetAndIndex() {
        #expect(Naming.mac(subnet: 1, index: 10) == "52:54:00:77:01:0a")
        #expect(Naming.mac(subnet: 254, index: 240) == "52:54:00:77:fe:f0")
        var seen = Set<String>()
        for s in AddressPlan.subnets { for i in 1...240 { seen.insert(Naming.mac(subnet: s, index: i)) } }
        #expect(seen.count == AddressPlan.subnets.count * 240)
    }

    @Test func bridgeNamesFitTheKernelLimit() {
        for s in AddressPlan.subnets { #expect(Naming.bridge(subnet: s).utf8.count <= 15) }
    }

    @Test(arguments: ["a", "demo", "web-2", "a1b2", String(repeating: "x", count: 40)])
    func acceptsDNSLabels(_ name: String) throws {
        try NameRule.checkCluster(name)
    }

    @Test(arguments: [
        ("", "empty"), ("Demo", "start with a lowercase"), ("1abc", "start with a lowercase"),
        ("a_b", "'_' is not allowed"), ("a.b", "'.' is not allowed"), ("ab-", "end with '-'"),
        ("a b", "' ' is not allowed"), (String(repeating: "x", count: 41), "longer than 40"),
        ("dé", "is not allowed"),
    ])
    func refusesWhatLibvirtTgtOrDNSWouldReject(_ name: String, _ reason: String) {
        #expect {
            try NameRule.checkCluster(name)
        } throws: { error in
            "\(error)".contains(reason)
        }
    }
}

@Suite struct ByteSizeTests {
    @Test(arguments: [("512", 512), ("512M", 512), ("512MiB", 512), ("1G", 1024), ("1.5GiB", 1536), ("2048k", 2)])
    func parsesWhatPeopleWrite(_ text: String, _ mib: Int) throws {
        #expect(try ByteSize.parseMiB(text) == mib)
    }

    @Test(arguments: ["", "0", "-1", "abc", "1X", "0.5M", "99999999G"])
    func refusesNonsense(_ text: String) {
        #expect(throws: ModelError.self) { try ByteSize.parseMiB(text) }
    }

    @Test func describesBytesForPeople() {
        #expect(ByteSize.describe(bytes: 512) == "512 B")
        #expect(ByteSize.describe(bytes: 64 << 20) == "64 MiB")
        #expect(ByteSize.describe(bytes: 1536 << 20) == "1.5 GiB")
    }
}
