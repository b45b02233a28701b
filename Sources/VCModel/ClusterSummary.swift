import Foundation

/// What `vc cluster list` shows of a cluster: its record reduced to the spec, the state,
/// the network's CIDR, each VM's name and node, the times and the last failure. It has
/// the keys and nesting of ``VirtualCluster``'s JSON, so that vcd decodes it straight from
/// a stored record (leaving out addresses, disks and generations) and a script reading
/// `.spec.name` or `.state` of a full record reads a summary the same way.
///
/// A listing of many clusters is what makes this worth a type: decoding every record in
/// full and encoding it again cost vcd more than etcd took to read them.
public struct ClusterSummary: Codable, Sendable, Equatable {
    /// The part of ``ClusterSpec`` a listing shows.
    public struct Spec: Codable, Sendable, Equatable {
        public var name: String
        public var image: String
        public var vms: Int
        public var vcpus: Int
        public var memoryMiB: Int

        public init(name: String, image: String, vms: Int, vcpus: Int, memoryMiB: Int) {
            self.name = name
            self.image = image
            self.vms = vms
            self.vcpus = vcpus
            self.memoryMiB = memoryMiB
        }
    }

    /// The part of ``ClusterNetwork`` a listing shows.
    public struct Network: Codable, Sendable, Equatable {
        public var cidr: String

        public init(cidr: String) { self.cidr = cidr }
    }

    /// A VM and the node it is placed on.
    public struct VMPlacement: Codable, Sendable, Equatable {
        public var name: String
        public var node: String

        public init(name: String, node: String) {
            self.name = name
            self.node = node
        }
    }

    public var spec: Spec
    public var state: ClusterState
    public var network: Network
    public var vms: [VMPlacement]
    public var createdAt: Date
    public var updatedAt: Date
    /// Why the last operation failed, when it did.
    public var message: String?

    public init(
        spec: Spec, state: ClusterState, network: Network, vms: [VMPlacement], createdAt: Date, updatedAt: Date,
        message: String? = nil
    ) {
        self.spec = spec
        self.state = state
        self.network = network
        self.vms = vms
        self.createdAt = createdAt
        self.updatedAt = updatedAt
        self.message = message
    }

    /// The summary of a full record: what decoding that record's JSON as a summary gives.
    public init(_ cluster: VirtualCluster) {
        let s = cluster.spec
        self.init(
            spec: Spec(name: s.name, image: s.image, vms: s.vms, vcpus: s.vcpus, memoryMiB: s.memoryMiB),
            state: cluster.state, network: Network(cidr: cluster.network.cidr),
            vms: cluster.vms.map { VMPlacement(name: $0.name, node: $0.node) }, createdAt: cluster.createdAt,
            updatedAt: cluster.updatedAt, message: cluster.message)
    }

    public var name: String { spec.name }

    /// The nodes its VMs are placed on, each once, sorted.
    public var nodes: [String] { Set(vms.map(\.node)).sorted() }
}
