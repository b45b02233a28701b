/// The dnsmasq configuration that serves one cluster network: a static MAC→IP table with
/// infinite leases and the VMs' names in DNS. Non-authoritative on purpose: when several
/// nodes serve the same table, an authoritative server would NAK the others' leases.
public struct DHCPTable: Sendable, Equatable {
    public var network: ClusterNetwork
    public var vms: [VirtualMachine]
    /// Directory for the pid file and log.
    public var runDirectory: String
    /// Where this node's dnsmasq listens: the gateway on a single node, the node's own
    /// address on the network when several nodes serve it.
    public var serviceAddress: String
    /// The MTU guests must use (DHCP option 26) when the network runs over VXLAN.
    public var mtu: Int?

    public init(
        network: ClusterNetwork, vms: [VirtualMachine], runDirectory: String, serviceAddress: String? = nil,
        mtu: Int? = nil
    ) {
        self.network = network
        self.vms = vms
        self.runDirectory = runDirectory
        self.serviceAddress = serviceAddress ?? network.gateway
        self.mtu = mtu
    }

    public var pidFile: String { "\(runDirectory)/\(network.bridge).pid" }
    public var logFile: String { "\(runDirectory)/\(network.bridge).log" }
    public var configFile: String { "\(runDirectory)/\(network.bridge).conf" }

    public var configuration: String {
        let base = network.cidr.split(separator: "/")[0]
        var lines = [
            "# Made by vcd for cluster network \(network.bridge) (\(network.domain)); rewritten on every change.",
            "interface=\(network.bridge)",
            "bind-interfaces",
            "except-interface=lo",
            "listen-address=\(serviceAddress)",
            "pid-file=\(pidFile)",
            "log-facility=\(logFile)",
            "user=nobody",
            "leasefile-ro",
            "no-resolv",
            "no-hosts",
            "no-poll",
            "domain=\(network.domain)",
            "local=/\(network.domain)/",
            "dhcp-range=\(base),static,255.255.255.0,infinite",
            // No router until the gateway service exists. Every node serving the network
            // is a name server, so one node's loss costs a guest one timeout, not its DNS.
            "dhcp-option=option:router",
            "dhcp-option=option:dns-server,\(network.nameServers.joined(separator: ","))",
        ]
        // Forced: guests that did not ask for option 26 must still not send frames the
        // VXLAN would have to fragment.
        if let mtu { lines.append("dhcp-option-force=26,\(mtu)") }
        for vm in vms {
            lines.append("dhcp-host=\(vm.mac),\(vm.ip),\(vm.name),infinite")
            lines.append("host-record=\(vm.name).\(network.domain),\(vm.name),\(vm.ip)")
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
