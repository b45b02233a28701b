/// A service the host offers to the guests of a cluster network, on the network's own
/// address (or, for DHCP, by broadcast). The tenant boundary lets guests reach exactly the
/// services listed here and nothing else on the host.
public struct GuestService: Codable, Sendable, Hashable, CustomStringConvertible {
    public enum Transport: String, Codable, Sendable { case udp, tcp }

    public var name: String
    public var transport: Transport
    public var port: Int
    /// Whether guests reach it by broadcast before they have an address (DHCP), rather
    /// than at the network's gateway address.
    public var broadcast: Bool

    public init(name: String, transport: Transport, port: Int, broadcast: Bool = false) {
        self.name = name
        self.transport = transport
        self.port = port
        self.broadcast = broadcast
    }

    public var description: String { "\(name) (\(transport.rawValue)/\(port))" }

    /// What every cluster network offers today: dnsmasq's DHCP and DNS. NTP, TFTP, LDAP and
    /// the gateway join this list when they are served; nothing else needs to change.
    public static let offeredOnEveryNetwork: [GuestService] = [
        GuestService(name: "dhcp", transport: .udp, port: 67, broadcast: true),
        GuestService(name: "dns", transport: .udp, port: 53),
        GuestService(name: "dns", transport: .tcp, port: 53),
    ]
}

/// The nftables rules that close a cluster network: guests reach the host only for the
/// offered services, never another network, and send only from their own MAC and IP.
/// Pure: it renders `nft -f` scripts; `VCNetwork.ClusterFirewall` loads them.
///
/// Two tables of Peerless's own per network, named after its bridge, so that removing
/// them undoes exactly what was made and nothing else:
/// - `inet peerless_BRIDGE`: the host's input from the bridge (services only, plus replies
///   to connections the host opened, such as an administrator's SSH) and forwarding into
///   or out of the bridge (none).
/// - `bridge peerless_BRIDGE`: every frame a VM's port brings in must carry the VM's MAC,
///   and ARP and IPv4 its address (0.0.0.0 only for DHCP before it has one); no DHCP
///   server, no IPv6, no VLAN tags, nothing but IPv4 and ARP. Rules sit in the bridge's
///   prerouting hook, so they hold for frames to the host and to other VMs alike.
public struct GuestBoundary: Sendable, Equatable {
    public var network: ClusterNetwork
    public var vms: [VirtualMachine]
    public var services: [GuestService]
    /// This node's own address on the network, where its services listen: the gateway on
    /// a single node, the node's address when several nodes host the network.
    public var serviceAddress: String

    public init(
        network: ClusterNetwork, vms: [VirtualMachine], services: [GuestService] = GuestService.offeredOnEveryNetwork,
        serviceAddress: String? = nil
    ) {
        self.network = network
        self.vms = vms
        self.services = services
        self.serviceAddress = serviceAddress ?? network.gateway
    }

    /// Both tables carry this name, in the `inet` and the `bridge` family.
    public var table: String { Self.table(bridge: network.bridge) }

    public static func table(bridge: String) -> String { "peerless_\(bridge)" }

    /// The families of the two tables.
    public static let families = ["inet", "bridge"]

    /// Loads (or atomically replaces) both tables: one nft transaction, so there is no
    /// instant with half the rules.
    public var ruleset: String {
        let bridge = network.bridge
        var lines = ["# Made by vcd for cluster network \(bridge) (\(network.domain)); rewritten on every change."]
        lines += Self.deletion(bridge: bridge).split(separator: "\n").map(String.init)
        lines.append("table inet \(table) {")
        lines.append("  chain input {")
        lines.append("    type filter hook input priority filter - 10; policy accept;")
        lines.append("    iifname != \"\(bridge)\" accept")
        lines.append("    ct state established,related accept")
        for s in services {
            // Only to the network's own address (or the broadcast a DHCP client starts
            // with): another listener on the same port elsewhere on the host stays closed.
            let to = s.broadcast ? "ip daddr { 255.255.255.255, \(serviceAddress) } " : "ip daddr \(serviceAddress) "
            lines.append("    \(to)\(s.transport.rawValue) dport \(s.port) accept comment \"\(s.name)\"")
        }
        lines.append("    drop")
        lines.append("  }")
        lines.append("  chain forward {")
        lines.append("    type filter hook forward priority filter - 10; policy accept;")
        lines.append("    iifname \"\(bridge)\" oifname != \"\(bridge)\" drop")
        lines.append("    oifname \"\(bridge)\" iifname != \"\(bridge)\" drop")
        lines.append("  }")
        lines.append("}")
        lines.append("table bridge \(table) {")
        lines.append("  chain prerouting {")
        lines.append("    type filter hook prerouting priority filter - 10; policy accept;")
        for vm in vms {
            lines.append("    iifname \"\(Naming.tap(bridge: bridge, index: vm.index))\" goto vm\(vm.index)")
        }
        // A port in this network's tap name space that no VM of the record owns sends
        // nothing (the bridge family cannot match the bridge itself on this kernel).
        lines.append("    iifname \"\(bridge)v*\" drop")
        lines.append("  }")
        for vm in vms {
            lines.append("  chain vm\(vm.index) {")
            lines.append("    ether saddr != \(vm.mac) drop")
            lines.append("    ether type != { ip, arp } drop")
            lines.append("    arp saddr ether != \(vm.mac) drop")
            lines.append("    arp saddr ip != { 0.0.0.0, \(vm.ip) } drop")
            lines.append("    ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept")
            lines.append("    ip saddr != \(vm.ip) drop")
            lines.append("    udp sport 67 drop")
            lines.append("    accept")
            lines.append("  }")
        }
        lines.append("}")
        return lines.joined(separator: "\n") + "\n"
    }

    /// Removes both tables, and succeeds whether or not they exist: each is declared
    /// (a no-op when present) and then deleted, in one transaction.
    public static func deletion(bridge: String) -> String {
        families.map { "table \($0) \(table(bridge: bridge)) {}\ndelete table \($0) \(table(bridge: bridge))" }
            .joined(separator: "\n") + "\n"
    }
}
