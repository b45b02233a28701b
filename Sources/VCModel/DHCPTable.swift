/// The dnsmasq configuration that serves one cluster network: a static MAC→IP table with
/// infinite leases and the VMs' names in DNS. Non-authoritative on purpose: when several
/// nodes serve the same table, an authoritative server would NAK the others' leases.
public struct DHCPTable: Sendable, Equatable {
    public var network: ClusterNetwork
    public var vms: [VirtualMachine]
    /// Directory for the pid file and log.
    public var runDirectory: String

    public init(network: ClusterNetwork, vms: [VirtualMachine], runDirectory: String) {
        self.network = network
        self.vms = vms
        self.runDirectory = runDirectory
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
            "listen-address=\(network.gateway)",
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
            // No router until the gateway service exists; name server is the bridge address.
            "dhcp-option=option:router",
            "dhcp-option=option:dns-server,\(network.gateway)",
        ]
        for vm in vms {
            lines.append("dhcp-host=\(vm.mac),\(vm.ip),\(vm.name),infinite")
            lines.append("host-record=\(vm.name).\(network.domain),\(vm.name),\(vm.ip)")
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
