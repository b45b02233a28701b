import Logging
import VCHost
import VCModel

/// The VXLAN link that joins a cluster's bridge on this node to the same bridge on the
/// other nodes hosting its VMs. No multicast: one all-zeros forwarding entry per peer node
/// (head-end replication), and no learning from the underlay. The link's MTU leaves room
/// for the 50 bytes of VXLAN over IPv4, so the bridge (the minimum of its ports) and the
/// guests (told by DHCP) do not send frames the underlay would fragment.
public struct ClusterOverlay: Sendable {
    public let network: ClusterNetwork
    /// This node's address on the node network: the tunnels' local end.
    public let local: String
    /// The other hosting nodes' underlay addresses.
    public let peers: Set<String>
    private let logger: Logger

    /// 1500 on the underlay minus the VXLAN, UDP, IP and inner Ethernet headers.
    public static let mtu = 1450
    public static let port = 4789

    public init(network: ClusterNetwork, local: String, peers: Set<String>, logger: Logger) {
        self.network = network
        self.local = local
        self.peers = peers
        self.logger = logger
    }

    public var name: String { Naming.overlay(bridge: network.bridge) }

    /// Makes the link, attaches it to the bridge and makes its forwarding entries exactly
    /// the peers. Idempotent.
    public func ensure() async throws(NetworkError) {
        if await !HostCommand.succeeds("ip", ["link", "show", "dev", name]) {
            try await ip(
                "create",
                [
                    // Link options (mtu) before `type`: after it, ip reads them as VXLAN's.
                    "link", "add", name, "mtu", "\(Self.mtu)", "type", "vxlan", "id", "\(network.vni)", "dstport",
                    "\(Self.port)", "local", local, "nolearning",
                ])
        }
        try await ip("attach", ["link", "set", "dev", name, "master", network.bridge])
        try await ip("bring up", ["link", "set", "dev", name, "up"])
        let present = try await floodPeers()
        for peer in peers.subtracting(present).sorted() {
            try await bridgeCommand(["fdb", "append", "00:00:00:00:00:00", "dev", name, "dst", peer])
        }
        for peer in present.subtracting(peers).sorted() {
            try await bridgeCommand(["fdb", "del", "00:00:00:00:00:00", "dev", name, "dst", peer])
        }
    }

    /// The link's VXLAN network identifier, or nil when it does not exist.
    public func vni() async -> Int? {
        guard let out = try? await HostCommand.run("ip", ["-d", "-o", "link", "show", "dev", name]) else { return nil }
        let fields = out.stdout.split(separator: " ")
        guard let i = fields.firstIndex(of: "id"), i + 1 < fields.count else { return nil }
        return Int(fields[i + 1])
    }

    /// Deletes the link. Idempotent.
    public func remove() async throws(NetworkError) {
        guard await HostCommand.succeeds("ip", ["link", "show", "dev", name]) else { return }
        try await ip("delete", ["link", "del", "dev", name])
    }

    /// The peers the link floods to now.
    public func floodPeers() async throws(NetworkError) -> Set<String> {
        let out: CommandOutput
        do {
            out = try await HostCommand.run("bridge", ["fdb", "show", "dev", name])
        } catch {
            throw .bridgeFailed(bridge: name, operation: "list the forwarding entries of", reason: error.reason)
        }
        return Self.floodPeers(fdb: out.stdout)
    }

    /// Parses `bridge fdb show dev X`: the `dst` of every all-zeros entry.
    public static func floodPeers(fdb: String) -> Set<String> {
        var out = Set<String>()
        for line in fdb.split(separator: "\n") where line.hasPrefix("00:00:00:00:00:00 ") {
            let fields = line.split(separator: " ")
            if let i = fields.firstIndex(of: "dst"), i + 1 < fields.count { out.insert(String(fields[i + 1])) }
        }
        return out
    }

    /// VXLAN links in Peerless's name space on this host (`PREFIX` + digits + `x`).
    public static func linksOnHost(bridgePrefix: String) async -> [String] {
        guard let out = try? await HostCommand.run("ip", ["-o", "link", "show", "type", "vxlan"]) else { return [] }
        return out.stdout.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            guard fields.count > 1 else { return nil }
            let name = String(fields[1].split(separator: ":").first ?? "").split(separator: "@").first.map(String.init)
            guard let name, name.hasPrefix(bridgePrefix), name.hasSuffix("x"),
                Int(name.dropFirst(bridgePrefix.count).dropLast()) != nil
            else { return nil }
            return name
        }
    }

    private func ip(_ operation: String, _ args: [String]) async throws(NetworkError) {
        do {
            try await HostCommand.run("ip", args, logger: logger)
        } catch {
            throw .bridgeFailed(bridge: name, operation: operation, reason: error.reason)
        }
    }

    private func bridgeCommand(_ args: [String]) async throws(NetworkError) {
        do {
            try await HostCommand.run("bridge", args, logger: logger)
        } catch {
            throw .bridgeFailed(bridge: name, operation: "set the forwarding entries of", reason: error.reason)
        }
    }
}
