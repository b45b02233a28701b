import Foundation
import Testing

@testable import VCCatalog
@testable import VCDaemon
@testable import VCModel
@testable import VCStorage

#if canImport(FoundationXML)
    import FoundationXML
#endif

@Suite struct DomainDocumentTests {
    let vm = VirtualMachine(
        name: "demo-1", index: 1, mac: "52:54:00:77:01:01", ip: "10.77.1.11", node: "n1",
        diskIQN: "iqn.2026-11.dev.peerless:disk.demo-1", diskFile: "disks/demo/demo-1.raw",
        saveFile: "saves/demo/demo-1.save")

    func document(
        _ accel: Accelerator.Kind, keys: [String] = [], chap: CHAPReference? = nil, peers: [String] = []
    ) -> DomainDocument {
        DomainDocument(
            vm: vm, cluster: "demo", vcpus: 2, memoryMiB: 512, bridge: "vcbr1", portal: ISCSIPortal(host: "127.0.0.1"),
            initiator: "iqn.2026-11.dev.peerless:node.n1", accelerator: accel,
            consolePath: "/var/lib/peerless/consoles/demo/demo-1.log",
            chap: chap, sshKeys: keys, peers: peers)
    }

    func parse(_ xml: String) throws -> XMLElement {
        try XMLDocument(xmlString: xml).rootElement()!
    }

    func value(_ root: XMLElement, _ xpath: String) throws -> String? {
        try root.nodes(forXPath: xpath).first?.stringValue
    }

    @Test func tcgDomainBootsFromItsISCSIDiskWithTheNodesInitiator() throws {
        let root = try parse(document(.tcg).xml)
        #expect(try value(root, "/domain/@type") == "qemu")
        #expect(try root.nodes(forXPath: "/domain/cpu").isEmpty)
        #expect(try value(root, "/domain/name") == "demo-1")
        #expect(try value(root, "/domain/memory") == "512")
        #expect(try value(root, "/domain/vcpu") == "2")
        #expect(try value(root, "/domain/devices/disk/@type") == "network")
        #expect(try value(root, "/domain/devices/disk/source/@protocol") == "iscsi")
        #expect(try value(root, "/domain/devices/disk/source/@name") == "iqn.2026-11.dev.peerless:disk.demo-1/1")
        #expect(try value(root, "/domain/devices/disk/source/host/@name") == "127.0.0.1")
        #expect(try value(root, "/domain/devices/disk/source/host/@port") == "3260")
        #expect(
            try value(root, "/domain/devices/disk/source/initiator/iqn/@name") == "iqn.2026-11.dev.peerless:node.n1")
        #expect(try value(root, "/domain/devices/interface/source/@bridge") == "vcbr1")
        // A fixed tap name: the tenant boundary's rules name the port a VM sends from.
        #expect(try value(root, "/domain/devices/interface/target/@dev") == "vcbr1v1")
        #expect(try value(root, "/domain/devices/interface/mac/@address") == "52:54:00:77:01:01")
        #expect(try value(root, "/domain/devices/serial/source/@path") == "/var/lib/peerless/consoles/demo/demo-1.log")
        #expect(try root.nodes(forXPath: "/domain/devices/disk/source/auth").isEmpty)
    }

    @Test func kvmDomainPassesTheHostCPUThrough() throws {
        let root = try parse(document(.kvm).xml)
        #expect(try value(root, "/domain/@type") == "kvm")
        #expect(try value(root, "/domain/cpu/@mode") == "host-passthrough")
    }

    @Test func metadataNamesTheClusterSoUndoNeverTouchesForeignDomains() throws {
        let root = try parse(document(.tcg).xml)
        let meta = try root.nodes(forXPath: "/domain/metadata/*").first as? XMLElement
        #expect(meta?.uri == DomainDocument.metadataNamespace)
        #expect(meta?.attribute(forName: "cluster")?.stringValue == "demo")
    }

    @Test func hostnameAndKeysTravelAsOEMStringsEscaped() throws {
        let key = "ssh-ed25519 AAAA<&'\"> me@host"
        let root = try parse(document(.tcg, keys: [key]).xml)
        let entries = try root.nodes(forXPath: "/domain/sysinfo/oemStrings/entry").map { $0.stringValue ?? "" }
        #expect(entries.contains("peerless.hostname=demo-1"))
        #expect(entries.contains("peerless.ssh-key=\(key)"))
        #expect(try value(root, "/domain/os/smbios/@mode") == "sysinfo")
    }

    func oemStrings(_ doc: DomainDocument) throws -> [String] {
        try parse(doc.xml).nodes(forXPath: "/domain/sysinfo/oemStrings/entry").map { $0.stringValue ?? "" }
    }

    @Test func peersTravelAsOneOEMStringNextToTheHostname() throws {
        let entries = try oemStrings(document(.tcg, peers: ["demo-2", "demo-3"]))
        #expect(entries.contains("peerless.hostname=demo-1"))
        #expect(entries.filter { $0.hasPrefix("peerless.peers=") } == ["peerless.peers=demo-2,demo-3"])
    }

    @Test func extraOEMStringsComeAfterPeerlessOwn() throws {
        var doc = document(.tcg)
        doc.extraOEM = ["peerless.pings=10.77.1.11", "peerless.hostname=other"]
        let entries = try oemStrings(doc)
        // The guest reads the first of a key: a hook cannot rename the VM.
        #expect(
            entries.firstIndex(of: "peerless.hostname=demo-1")! < entries.firstIndex(of: "peerless.hostname=other")!)
        #expect(entries.contains("peerless.pings=10.77.1.11"))
    }

    @Test func noPeersNoPeersString() throws {
        let entries = try oemStrings(document(.tcg))
        #expect(!entries.contains { $0.hasPrefix("peerless.peers") })
    }

    @Test func peerNamesAreEscaped() throws {
        let doc = document(.tcg, peers: ["a<&'\">b", "c"])
        #expect(doc.xml.contains("<entry>peerless.peers=a&lt;&amp;&apos;&quot;&gt;b,c</entry>"))
        #expect(try oemStrings(doc).contains("peerless.peers=a<&'\">b,c"))
    }

    @Test func chapAddsAnAuthElementReferringToTheSecret() throws {
        let root = try parse(document(.tcg, chap: CHAPReference(user: "u", secretUsage: "peerless-chap")).xml)
        #expect(try value(root, "/domain/devices/disk/source/auth/@username") == "u")
        #expect(try value(root, "/domain/devices/disk/source/auth/secret/@usage") == "peerless-chap")
    }
}

@Suite struct DHCPTableTests {
    @Test func servesEveryVMStaticallyWithInfiniteLeasesAndNames() throws {
        let c = ClusterLayout.make(
            spec: ClusterSpec(name: "web", image: "i", vms: 2), subnet: 3, node: "n", addresses: try AddressPlan(),
            now: Date())
        let table = DHCPTable(network: c.network, vms: c.vms, runDirectory: "/run/x")
        let lines = table.configuration.split(separator: "\n").map(String.init)
        #expect(lines.contains("interface=vcbr3"))
        #expect(lines.contains("listen-address=10.77.3.1"))
        #expect(lines.contains("dhcp-range=10.77.3.0,static,255.255.255.0,infinite"))
        #expect(lines.contains("dhcp-host=52:54:00:77:03:01,10.77.3.11,web-1,infinite"))
        #expect(lines.contains("host-record=web-2.web.vc,web-2,10.77.3.12"))
        #expect(lines.contains("pid-file=/run/x/vcbr3.pid"))
        // Several nodes will serve the same table: an authoritative server would NAK the others.
        #expect(!lines.contains("dhcp-authoritative"))
    }
}

@Suite struct TargetListingTests {
    static let sample = """
        Target 1: iqn.2026-11.dev.peerless:disk.demo-1
            System information:
                Driver: iscsi
                State: ready
            I_T nexus information:
                I_T nexus: 2
                    Initiator: iqn.2026-11.dev.peerless:node.n1 alias: none
                    Connection: 0
                        IP Address: 127.0.0.1
            LUN information:
                LUN: 0
                    Type: controller
                    Backing store type: null
                    Backing store path: None
                    Backing store flags:
                LUN: 1
                    Type: disk
                    Size: 67 MB, Block size: 512
                    Backing store type: rdwr
                    Backing store path: /pool/disks/demo/demo-1.raw
                    Backing store flags:
            Account information:
            ACL information:
                iqn.2026-11.dev.peerless:node.n1
        Target 2: iqn.2026-11.dev.peerless:disk.demo-2
            System information:
                Driver: iscsi
                State: ready
            I_T nexus information:
            LUN information:
                LUN: 0
                    Backing store path: None
            Account information:
            ACL information:
        """

    @Test func readsTargetsLUNFilesACLsAndSessions() {
        let targets = TargetExporter.parse(Self.sample)
        #expect(targets.count == 2)
        #expect(targets[0].tid == 1)
        #expect(targets[0].iqn == "iqn.2026-11.dev.peerless:disk.demo-1")
        #expect(targets[0].backingFiles == ["/pool/disks/demo/demo-1.raw"])
        #expect(targets[0].initiators == ["iqn.2026-11.dev.peerless:node.n1"])
        #expect(targets[0].connected == ["iqn.2026-11.dev.peerless:node.n1"])
        #expect(targets[1].tid == 2)
        #expect(targets[1].backingFiles.isEmpty)
        #expect(targets[1].initiators.isEmpty)
    }

    @Test func emptyListingHasNoTargets() {
        #expect(TargetExporter.parse("").isEmpty)
    }
}

@Suite struct ConfigurationTests {
    /// `vcnode join --peer` writes vcd.yaml from a peer's settings: vcd reads back exactly
    /// those, and the node's own, with every other setting at its default.
    @Test func aConfigurationWrittenFromAPeerLoadsAsThatPeersSettings() throws {
        let shared = JoinConfiguration(
            etcdEndpoints: ["http://10.99.0.11:2379", "http://10.99.0.12:2379"], etcdPrefix: "/peerless",
            memberHeartbeatMilliseconds: 200, memberElectionMilliseconds: 2000, memberArguments: ["--unsafe-no-fsync"],
            replaceDeadMemberAfterSeconds: 0, leaseTTLSeconds: 3, reconcileIntervalSeconds: 5, networkPrefix: "10.78",
            bridgePrefix: "tb", apiPort: 7481)
        let yaml = shared.vcdYAML(node: "n4", underlay: "10.99.0.14", roles: [.compute], peer: "10.99.0.11:7481")
        let c = try DaemonConfiguration.load(yaml: yaml)
        var expected = DaemonConfiguration()
        expected.node = "n4"
        expected.roles = [.compute]
        expected.api.host = "10.99.0.14"
        expected.api.port = 7481
        expected.etcd.endpoints = shared.etcdEndpoints
        expected.etcd.member.heartbeatMilliseconds = 200
        expected.etcd.member.electionMilliseconds = 2000
        expected.etcd.member.arguments = ["--unsafe-no-fsync"]
        expected.etcd.replaceDeadMemberAfterSeconds = 0
        expected.network.underlay = "10.99.0.14"
        expected.network.prefix = "10.78"
        expected.network.bridgePrefix = "tb"
        expected.leaseTTLSeconds = 3
        expected.reconcileIntervalSeconds = 5
        #expect(c == expected, "\(yaml)")
        #expect(!yaml.contains("token"), "no secret in the file: \(yaml)")
    }

    @Test func aNodesDefaultNameComesFromItsHostName() {
        #expect(Naming.nodeName(host: "Web-01.example.org") == "web-01")
        #expect(Naming.nodeName(host: "n4") == "n4")
        #expect(Naming.nodeName(host: "7b_x") == "node-7b-x")
    }

    @Test func anEmptyFileKeepsEveryDefault() throws {
        let c = try DaemonConfiguration.load(yaml: "")
        #expect(c == DaemonConfiguration())
        #expect(c.api.port == 7480)
        #expect(c.pool.embeddedFilesystem == "btrfs")
    }

    @Test func givenKeysOverrideOnlyThemselves() throws {
        let c = try DaemonConfiguration.load(
            yaml: """
                node: n7
                api:
                  port: 9000
                iscsi:
                  portal: 127.0.0.1:3261
                testing:
                  failCreateAfterVMs: 2
                """)
        #expect(c.node == "n7")
        #expect(c.api.port == 9000)
        #expect(c.api.host == "127.0.0.1")
        #expect(c.iscsi.portal == "127.0.0.1:3261")
        #expect(c.iscsi.tgtControlPort == 0)
        #expect(c.testing.failCreateAfterVMs == 2)
    }

    /// The example an administrator copies must load, and say what the defaults are.
    @Test func theShippedExampleLoadsAndStatesTheDefaults() throws {
        let here = URL(fileURLWithPath: #filePath)
        let example = here.deletingLastPathComponent().appendingPathComponent("../../systemd/vcd.yaml.example")
        var c = try DaemonConfiguration.load(yaml: try String(contentsOf: example, encoding: .utf8))
        #expect(c.api.tokenFile == "/var/lib/peerless/api-token")
        c.api.tokenFile = nil
        var defaults = DaemonConfiguration()
        defaults.node = c.node
        #expect(c == defaults)
    }

    @Test func aRetiredSettingIsRefusedWithWhatReplacedIt() {
        #expect {
            try DaemonConfiguration.load(yaml: "iscsi:\n  chapUser: u\n")
        } throws: { "\($0)".contains("'iscsi.chapUser' is gone: every VM disk has a CHAP secret of its own") }
    }

    @Test func aMisspeltSettingIsRefusedNotIgnored() {
        #expect {
            try DaemonConfiguration.load(yaml: "api:\n  prot: 9000\n")
        } throws: { error in
            "\(error)".contains("api.prot")
        }
    }
}

@Suite struct CatalogKeyTests {
    @Test func prefixEndSelectsEveryKeyUnderThePrefix() {
        #expect(EtcdClient.prefixEnd("/peerless/") == "/peerless0")
        #expect(EtcdClient.prefixEnd("a") == "b")
    }

    @Test func keysLiveUnderTheConfiguredPrefix() {
        let catalog = Catalog(etcd: EtcdClient(endpoint: "http://127.0.0.1:1"), prefix: "/t1/")
        #expect(catalog.clusterKey("demo") == "/t1/clusters/demo")
        #expect(catalog.operationKey("demo") == "/t1/ops/demo")
        #expect(catalog.subnetKey(4) == "/t1/subnets/4")
    }
}
