// VCDaemon: the peer daemon's assembly: configuration, the API, lifecycle operations
// that carry out the model's plans, recovery and reconciliation, the node lease. It
// decides nothing the model can decide; it executes plans and records them in the catalog.
import Foundation
import VCModel
import VCStorage
import Yams

/// vcd's configuration: one struct, read once at start (from YAML), passed down.
/// Every field has a default, so the embedded single-machine setup needs no file.
public struct DaemonConfiguration: Codable, Sendable, Equatable {
    /// This node's name; defaults to the lowercased hostname.
    public var node: String
    /// Where vcd keeps what it can rebuild: consoles, dnsmasq files, the accelerator probe.
    public var stateDirectory: String
    public var api: APIConfiguration
    public var etcd: EtcdConfiguration
    public var libvirtURI: String
    /// How long vcd waits for one libvirt call before it reports libvirtd as not answering
    /// (a hung libvirtd would otherwise hold the request, and the cluster's lock, forever).
    public var libvirtCallTimeoutSeconds: Int
    public var pool: PoolConfiguration
    public var network: NetworkConfiguration
    public var iscsi: ISCSIConfiguration
    public var accelerator: AcceleratorConfiguration
    /// Lease TTL of the node's registration, in seconds.
    public var leaseTTLSeconds: Int
    /// How often the reconciler re-makes what the catalog says should exist; 0 runs it
    /// only at start (benchmarks that drive libvirt directly need that).
    public var reconcileIntervalSeconds: Int
    /// What this node does: `compute` runs VMs, `storage` holds the pool and tgtd. A single
    /// machine does both (the default); on several nodes one has `storage` only.
    public var roles: [NodeRole]
    /// Limits what this node offers to VMs below what libvirt reports (a node shared with
    /// other work, or a testbed of several nodes on one machine).
    public var capacity: CapacityLimits
    /// Fault injection for tests only; never set in production.
    public var testing: TestingHooks

    public struct CapacityLimits: Codable, Sendable, Equatable {
        public var memoryMiB: Int?
        public var cpus: Int?
    }

    public struct APIConfiguration: Codable, Sendable, Equatable {
        public var host: String = "127.0.0.1"
        public var port: Int = 7480
        /// The local socket vcnode and a local vc use.
        public var socket: String = "/run/peerless/vcd.sock"
        /// The bearer token TCP clients must send; made at first start. Default:
        /// `STATE/api-token`.
        public var tokenFile: String?
        /// The URL other nodes reach this API at; default `http://HOST:PORT`.
        public var advertise: String?
    }

    public struct EtcdConfiguration: Codable, Sendable, Equatable {
        public var endpoint: String = "http://127.0.0.1:2379"
        /// Every member's client URL; vcd fails over between them. Empty: `endpoint` alone.
        public var endpoints: [String] = []
        public var allEndpoints: [String] { endpoints.isEmpty ? [endpoint] : endpoints }
        /// The hosts of those URLs: a node whose underlay address is one of them is an
        /// etcd member.
        public var memberHosts: Set<String> { Set(allEndpoints.compactMap { URL(string: $0)?.host }) }
        /// Every key lives under it; tests use their own.
        public var prefix: String = "/peerless"
        /// How vcd starts the etcd member this node gets when it joins (`vcnode join`).
        public var member = EtcdMemberConfiguration()
        /// How long a voting member's node stays dead before a healthy node that is no
        /// member takes its seat by itself (`EtcdSeatKeeping`); 0: never (only `vcnode
        /// replace`). Long enough for a node to reboot with its member.
        public var replaceDeadMemberAfterSeconds: Int = 120
    }

    /// The etcd member vcd starts on this node once `vcnode join` has added it to the
    /// cluster (the founding members are the machine's own etcd service).
    public struct EtcdMemberConfiguration: Codable, Sendable, Equatable {
        public var program: String = "etcd"
        /// Default: `STATE/etcd-member/data`.
        public var dataDirectory: String?
        /// etcd's `--heartbeat-interval` and `--election-timeout`: the same as the other
        /// members'.
        public var heartbeatMilliseconds: Int = 100
        public var electionMilliseconds: Int = 1000
        /// Further flags, given as they are.
        public var arguments: [String] = []
    }

    public struct NetworkConfiguration: Codable, Sendable, Equatable {
        /// Cluster networks are PREFIX.N.0/24.
        public var prefix: String = "10.77"
        /// Their bridges are BRIDGEPREFIX + N.
        public var bridgePrefix: String = "vcbr"
        /// This node's address on the network between the nodes: cluster networks span
        /// nodes over VXLAN tunnels ending there. Unset on a single machine.
        public var underlay: String?
    }

    public struct ISCSIConfiguration: Codable, Sendable, Equatable {
        /// The portal of this node's tgtd, as QEMU and libiscsi reach it.
        public var portal: String = "127.0.0.1:3260"
        /// tgtd's management port (`tgtadm --control-port`); 0 for the default.
        public var tgtControlPort: Int = 0
    }

    public struct AcceleratorConfiguration: Codable, Sendable, Equatable {
        /// `auto` probes KVM and falls back to TCG; `kvm` or `tcg` force one.
        public var mode: String = "auto"
        /// A kernel and initrd that print PEERLESS-PROBE-OK when booted with
        /// `peerless.probe` (images/tiny/build.sh makes them).
        public var probeKernel: String = "/var/lib/peerless/probe/vmlinuz"
        public var probeInitrd: String = "/var/lib/peerless/probe/initrd.img"
        public var probeTimeoutSeconds: Int = 20
    }

    public struct TestingHooks: Codable, Sendable, Equatable {
        /// Make a create fail once this many VMs are complete (rollback tests).
        public var failCreateAfterVMs: Int?
        /// Make the step with this description (e.g. "secret web-2") fail (rollback tests).
        public var failStep: String?
        /// Sleep before every host step (crash-recovery tests).
        public var stepDelayMilliseconds: Int?
        /// Sleep inside the admission gate (concurrent-admission tests).
        public var admissionDelayMilliseconds: Int?
        /// SMBIOS OEM strings added to every domain this node defines (isolation tests
        /// tell the tiny guest what to ping: `peerless.pings=…`).
        public var guestOEM: [String]?
        /// Make every live migration from this node fail for real (drain fallback tests):
        /// the destination QEMU is told to listen on its loopback, so the source's
        /// connection to the underlay address is refused, as libvirt reports it.
        public var breakLiveMigration: Bool?
    }

    /// Where the TCP API's bearer token is kept.
    public var tokenPath: String { api.tokenFile ?? "\(stateDirectory)/api-token" }

    /// Where other nodes reach this node's API.
    public var advertisedAPI: String { api.advertise ?? "http://\(api.host):\(api.port)" }

    public func has(_ role: NodeRole) -> Bool { roles.contains(role) }

    public init() {
        node = Self.defaultNodeName()
        stateDirectory = "/var/lib/peerless"
        api = APIConfiguration()
        etcd = EtcdConfiguration()
        libvirtURI = "qemu:///system"
        libvirtCallTimeoutSeconds = 60
        pool = PoolConfiguration()
        network = NetworkConfiguration()
        iscsi = ISCSIConfiguration()
        accelerator = AcceleratorConfiguration()
        leaseTTLSeconds = 10
        reconcileIntervalSeconds = 15
        roles = [.compute, .storage]
        capacity = CapacityLimits()
        testing = TestingHooks()
    }

    /// Reads YAML; keys left out keep their defaults. Unknown keys are refused, so that a
    /// misspelt setting is not silently ignored.
    public static func load(yaml: String) throws -> DaemonConfiguration {
        let defaults = try JSONSerialization.jsonObject(with: JSONEncoder().encode(DaemonConfiguration()))
        guard let given = try Yams.load(yaml: yaml) else { return DaemonConfiguration() }
        let merged = try merge(given, over: defaults, path: "")
        return try JSONDecoder().decode(DaemonConfiguration.self, from: JSONSerialization.data(withJSONObject: merged))
    }

    struct UnknownSetting: Error, CustomStringConvertible {
        var path: String
        var description: String {
            if let why = DaemonConfiguration.retired[path] { return "setting '\(path)' is gone: \(why); remove it" }
            return "unknown setting '\(path)'"
        }
    }

    /// Settings earlier versions read, and why they went.
    static let retired = [
        "iscsi.chapUser": "every VM disk has a CHAP secret of its own now, made at create",
        "iscsi.chapPassword": "every VM disk has a CHAP secret of its own now, made at create",
    ]

    private static func merge(_ given: Any, over defaults: Any, path: String) throws -> Any {
        guard let g = given as? [String: Any], let d = defaults as? [String: Any] else { return given }
        var out = d
        for (key, value) in g {
            let sub = path.isEmpty ? key : "\(path).\(key)"
            guard d.keys.contains(key) || isOptionalSetting(sub) else { throw UnknownSetting(path: sub) }
            out[key] = try d[key].map { try merge(value, over: $0, path: sub) } ?? value
        }
        return out
    }

    /// Optional settings are absent from the encoded defaults, so they are listed here.
    private static func isOptionalSetting(_ path: String) -> Bool {
        [
            "api.tokenFile", "api.advertise", "network.underlay", "etcd.member.dataDirectory", "capacity.memoryMiB",
            "capacity.cpus",
            "testing.failCreateAfterVMs", "testing.failStep",
            "testing.stepDelayMilliseconds", "testing.admissionDelayMilliseconds", "testing.guestOEM",
            "testing.breakLiveMigration",
        ]
        .contains(path)
    }

    static func defaultNodeName() -> String {
        var buf = [CChar](repeating: 0, count: 256)
        gethostname(&buf, buf.count)
        return Naming.nodeName(
            host: String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }
}
