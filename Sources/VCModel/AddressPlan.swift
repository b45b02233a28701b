import struct Foundation.Date

/// Turns a subnet index into a cluster's private /24 and its VMs' static MAC→IP table.
/// Subnets are `P.Q.N.0/24` under a configurable two-octet prefix (`10.77` by default);
/// the gateway is `.1`, VM `i` gets `.(10+i)`.
public struct AddressPlan: Sendable, Equatable {
    public let prefix: String
    /// Bridges are PREFIX + subnet index, and VM taps bridge + `v` + VM index: at most 7
    /// characters, so tap names stay within Linux's 15.
    public let bridgePrefix: String
    public static let subnets = 1...254
    public static let firstHost = 10

    public init(prefix: String = "10.77", bridgePrefix: String = "vcbr") throws(ModelError) {
        let parts = prefix.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 2, parts.allSatisfy({ UInt8($0) != nil }) else {
            throw .invalidSize(what: "network prefix", value: prefix, reason: "expected two octets such as 10.77")
        }
        self.prefix = prefix
        guard (1...7).contains(bridgePrefix.utf8.count), bridgePrefix.utf8.allSatisfy({ $0 >= 97 && $0 <= 122 }) else {
            throw .invalidSize(what: "bridge prefix", value: bridgePrefix, reason: "use 1 to 7 lowercase letters")
        }
        self.bridgePrefix = bridgePrefix
    }

    public func network(cluster: String, subnet: Int) -> ClusterNetwork {
        ClusterNetwork(
            subnet: subnet, bridge: Naming.bridge(subnet: subnet, prefix: bridgePrefix),
            cidr: "\(prefix).\(subnet).0/24",
            gateway: "\(prefix).\(subnet).1", prefixLength: 24, domain: Naming.domain(cluster: cluster))
    }

    public func address(subnet: Int, index: Int) -> String { "\(prefix).\(subnet).\(Self.firstHost + index)" }

    /// Host numbers the nodes that host a cluster's VMs take on its network, in the order
    /// they are handed out: below the VMs (after the gateway), then from the top down.
    /// VMs use .11 to .(10 + ClusterSpec.vmRange.upperBound).
    public static let nodeHosts: [Int] =
        Array(2...9) + Array((firstHost + ClusterSpec.vmRange.upperBound + 1...254).reversed())

    /// Gives every node in `nodes` an address on the network, keeping those it has.
    public func nodeAddresses(subnet: Int, nodes: Set<String>, keeping current: [String: String]) throws(ModelError)
        -> [String: String]
    {
        var out = current.filter { nodes.contains($0.key) }
        var free = Self.nodeHosts.map { "\(prefix).\(subnet).\($0)" }.filter { !out.values.contains($0) }
        for node in nodes.sorted() where out[node] == nil {
            guard !free.isEmpty else {
                throw .invalidSize(
                    what: "nodes of one cluster", value: "\(nodes.count)",
                    reason: "a cluster network has room for \(Self.nodeHosts.count) hosting nodes")
            }
            out[node] = free.removeFirst()
        }
        return out
    }

    /// The VXLAN network identifier of a subnet: fixed by it, so unique while it is.
    public static func vni(subnet: Int) -> Int { 7700 + subnet }

    /// The lowest subnet index not in `used`, or nil when all are taken.
    public static func firstFree(used: Set<Int>) -> Int? { subnets.first { !used.contains($0) } }
}

/// Lays out a new cluster: every VM's name, addresses, disk and target, decided before
/// any host change so that the whole plan can be journaled first.
public enum ClusterLayout {
    public static func make(
        spec: ClusterSpec, subnet: Int, node: String, addresses: AddressPlan, now: Date
    ) -> VirtualCluster {
        make(spec: spec, subnet: subnet, placements: [:], defaultNode: node, addresses: addresses, now: now)
    }

    /// With each VM on the node `placements` gives it (`defaultNode` for the rest).
    public static func make(
        spec: ClusterSpec, subnet: Int, placements: [String: String], defaultNode: String = "", addresses: AddressPlan,
        now: Date
    ) -> VirtualCluster {
        let network = addresses.network(cluster: spec.name, subnet: subnet)
        let vms = (1...spec.vms).map { i in
            let name = Naming.vmName(cluster: spec.name, index: i)
            return VirtualMachine(
                name: name, index: i, mac: Naming.mac(subnet: subnet, index: i),
                ip: addresses.address(subnet: subnet, index: i), node: placements[name] ?? defaultNode,
                diskIQN: Naming.diskIQN(vm: name), diskFile: "disks/\(spec.name)/\(name).raw",
                saveFile: "saves/\(spec.name)/\(name).save")
        }
        return VirtualCluster(spec: spec, state: .creating, network: network, vms: vms, createdAt: now, updatedAt: now)
    }
}
