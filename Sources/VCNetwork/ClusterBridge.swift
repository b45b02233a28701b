import Logging
import VCHost
import VCModel

/// A cluster network's bridge. VMs' taps are attached to it by libvirt.
public struct ClusterBridge: Sendable {
    public let network: ClusterNetwork
    /// This node's address on the network: the gateway, or the node's own when several
    /// nodes host it.
    public let address: String
    private let logger: Logger

    public init(network: ClusterNetwork, address: String? = nil, logger: Logger) {
        self.network = network
        self.address = address ?? network.gateway
        self.logger = logger
    }

    public var name: String { network.bridge }

    /// Subnet indexes whose bridge (PREFIX + index) exists on this host, whoever made it.
    /// A new cluster must not take one of them: another catalog (or a leftover) owns it.
    public static func subnetsInUseOnHost(bridgePrefix: String) async -> Set<Int> {
        guard let out = try? await HostCommand.run("ip", ["-o", "link", "show", "type", "bridge"]) else { return [] }
        var used = Set<Int>()
        for line in out.stdout.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count > 1 else { continue }
            let name = fields[1].split(separator: ":").first.map(String.init) ?? ""
            if name.hasPrefix(bridgePrefix), let n = Int(name.dropFirst(bridgePrefix.count)) { used.insert(n) }
        }
        return used
    }

    public func exists() async -> Bool { await HostCommand.succeeds("ip", ["link", "show", "dev", name]) }

    /// Creates the bridge with this node's address and brings it up. Idempotent; an
    /// address of the network that is not this node's any more is taken off. On a network
    /// that spans nodes the gateway address is left as it is: it comes and goes with the
    /// election (`holdGateway`, `releaseGateway`).
    public func ensure() async throws(NetworkError) {
        if await !exists() {
            try await ip(
                "create", ["link", "add", "name", name, "type", "bridge", "stp_state", "0", "forward_delay", "0"])
        }
        let address = "\(self.address)/\(network.prefixLength)"
        let shown = (try? await HostCommand.run("ip", ["-o", "-4", "addr", "show", "dev", name]))?.stdout ?? ""
        if !shown.contains(" \(address) ") {
            try await ip("address", ["addr", "replace", address, "dev", name])
        }
        for line in shown.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard let i = fields.firstIndex(of: "inet"), i + 1 < fields.count, fields[i + 1] != address,
                fields[i + 1] != gatewayAddress
            else {
                continue
            }
            try await ip("address", ["addr", "del", String(fields[i + 1]), "dev", name])
        }
        try await ip("bring up", ["link", "set", "dev", name, "up"])
    }

    private var gatewayAddress: String { "\(network.gateway)/\(network.prefixLength)" }

    /// Whether the gateway address is on this node's bridge, besides the node's own.
    public func holdsGateway() async -> Bool {
        guard address != network.gateway,
            let shown = try? await HostCommand.run("ip", ["-o", "-4", "addr", "show", "dev", name])
        else { return false }
        return shown.stdout.contains(" \(gatewayAddress) ")
    }

    /// Puts the gateway address on the bridge, next to the node's own; this node won the
    /// election. Idempotent; a missing bridge is an error (it is made first).
    public func holdGateway() async throws(NetworkError) {
        guard address != network.gateway, await !holdsGateway() else { return }
        try await ip("hold the gateway", ["addr", "replace", gatewayAddress, "dev", name])
    }

    /// Takes the gateway address off the bridge. Idempotent, also without a bridge.
    public func releaseGateway() async throws(NetworkError) {
        guard await holdsGateway() else { return }
        try await ip("release the gateway", ["addr", "del", gatewayAddress, "dev", name])
    }

    /// Takes the gateway address off every Peerless bridge on this host that has an
    /// address besides it (a network that spans nodes; on a single node the gateway is
    /// the node's own address and stays). For a node that lost its lease: it cannot tell
    /// whether another node holds the address by now.
    public static func releaseGatewaysOnHost(plan: AddressPlan, logger: Logger) async {
        for subnet in await subnetsInUseOnHost(bridgePrefix: plan.bridgePrefix) {
            let network = plan.network(cluster: "", subnet: subnet)
            let bridge = ClusterBridge(network: network, address: "", logger: logger)
            let shown =
                (try? await HostCommand.run("ip", ["-o", "-4", "addr", "show", "dev", bridge.name]))?.stdout ?? ""
            guard shown.split(separator: "\n").count > 1 else { continue }
            try? await bridge.releaseGateway()
        }
    }

    /// Deletes the bridge. Idempotent.
    public func remove() async throws(NetworkError) {
        guard await exists() else { return }
        try await ip("delete", ["link", "del", "dev", name])
    }

    private func ip(_ operation: String, _ args: [String]) async throws(NetworkError) {
        do {
            try await HostCommand.run("ip", args, logger: logger)
        } catch {
            throw .bridgeFailed(bridge: name, operation: operation, reason: error.reason)
        }
    }
}
