import Foundation

/// A golden image in the storage pool. VMs boot from reflink copies of it.
public struct GoldenImage: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable { case importing, ready }

    public var name: String
    public var state: State
    /// Format of the file it was imported from; the pool always holds raw.
    public var sourceFormat: String
    public var sizeBytes: UInt64
    /// Path relative to the pool root.
    public var file: String
    /// The node whose vcd is importing it (for recovery of an interrupted import).
    public var node: String
    public var importedAt: Date

    public init(
        name: String, state: State, sourceFormat: String, sizeBytes: UInt64, file: String, node: String,
        importedAt: Date
    ) {
        self.name = name
        self.state = state
        self.sourceFormat = sourceFormat
        self.sizeBytes = sizeBytes
        self.file = file
        self.node = node
        self.importedAt = importedAt
    }

    public static func file(for name: String) -> String { "images/\(name).raw" }
}

public enum ClusterState: String, Codable, Sendable, CaseIterable {
    case creating, running, suspending, suspended, resuming, destroying, failed
}

/// A cluster's private network: one bridge, one /24, served by its own dnsmasq.
public struct ClusterNetwork: Codable, Sendable, Equatable {
    public var subnet: Int
    public var bridge: String
    public var cidr: String
    public var gateway: String
    public var prefixLength: Int
    public var domain: String
    /// The VXLAN segment that joins the bridges of every node hosting one of the VMs.
    public var vni: Int
    /// Each hosting node's own address on the network (its dnsmasq listens there). Empty
    /// on a single node without an underlay: the node then holds the gateway address.
    public var nodeAddresses: [String: String]

    public init(
        subnet: Int, bridge: String, cidr: String, gateway: String, prefixLength: Int, domain: String,
        vni: Int? = nil, nodeAddresses: [String: String] = [:]
    ) {
        self.subnet = subnet
        self.bridge = bridge
        self.cidr = cidr
        self.gateway = gateway
        self.prefixLength = prefixLength
        self.domain = domain
        self.vni = vni ?? AddressPlan.vni(subnet: subnet)
        self.nodeAddresses = nodeAddresses
    }

    enum CodingKeys: String, CodingKey { case subnet, bridge, cidr, gateway, prefixLength, domain, vni, nodeAddresses }

    /// Records written before several nodes had neither field.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        subnet = try c.decode(Int.self, forKey: .subnet)
        bridge = try c.decode(String.self, forKey: .bridge)
        cidr = try c.decode(String.self, forKey: .cidr)
        gateway = try c.decode(String.self, forKey: .gateway)
        prefixLength = try c.decode(Int.self, forKey: .prefixLength)
        domain = try c.decode(String.self, forKey: .domain)
        vni = try c.decodeIfPresent(Int.self, forKey: .vni) ?? AddressPlan.vni(subnet: subnet)
        nodeAddresses = try c.decodeIfPresent([String: String].self, forKey: .nodeAddresses) ?? [:]
    }

    /// The address `node` serves DHCP and DNS on: its own, or the gateway on a single node.
    public func serviceAddress(of node: String) -> String { nodeAddresses[node] ?? gateway }

    /// Every address guests may ask for DNS, in a stable order.
    public var nameServers: [String] {
        nodeAddresses.isEmpty
            ? [gateway] : nodeAddresses.values.sorted { $0.ipSortKey.lexicographicallyPrecedes($1.ipSortKey) }
    }
}

extension String {
    /// Sorts dotted quads numerically.
    var ipSortKey: [Int] { split(separator: ".").map { Int($0) ?? 0 } }
}

public struct VirtualMachine: Codable, Sendable, Equatable {
    public var name: String
    public var index: Int
    public var mac: String
    public var ip: String
    /// The node that runs it (its placement); its disk's target admits only the initiator
    /// name of this incarnation, `Naming.initiatorIQN(node:vm:generation:)`.
    public var node: String
    /// Raised by every new placement, by compare-and-swap of the cluster record, so that
    /// an incarnation's initiator name is never used, and so never admitted, twice.
    public var generation: Int
    /// The highest generation ever admitted at the storage, when a migration that failed
    /// gave the VM back to its old incarnation: the next placement goes above it, so that
    /// the name the destination was admitted under is never used again.
    public var spentGeneration: Int?
    public var diskIQN: String
    /// Pool-relative path of its private copy-on-write disk.
    public var diskFile: String
    /// Pool-relative path of its memory image while the cluster is suspended.
    public var saveFile: String

    public init(
        name: String, index: Int, mac: String, ip: String, node: String, generation: Int = 1, diskIQN: String,
        diskFile: String, saveFile: String
    ) {
        self.name = name
        self.index = index
        self.mac = mac
        self.ip = ip
        self.node = node
        self.generation = generation
        self.diskIQN = diskIQN
        self.diskFile = diskFile
        self.saveFile = saveFile
    }

    enum CodingKeys: String, CodingKey {
        case name, index, mac, ip, node, generation, spentGeneration, diskIQN, diskFile, saveFile
    }

    /// Records written before placements had generations are generation 0, whose
    /// incarnation still logs in with the node's name (so an upgrade restarts nothing).
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        index = try c.decode(Int.self, forKey: .index)
        mac = try c.decode(String.self, forKey: .mac)
        ip = try c.decode(String.self, forKey: .ip)
        node = try c.decode(String.self, forKey: .node)
        generation = try c.decodeIfPresent(Int.self, forKey: .generation) ?? 0
        spentGeneration = try c.decodeIfPresent(Int.self, forKey: .spentGeneration)
        diskIQN = try c.decode(String.self, forKey: .diskIQN)
        diskFile = try c.decode(String.self, forKey: .diskFile)
        saveFile = try c.decode(String.self, forKey: .saveFile)
    }

    /// The generation of its next placement: above every one admitted so far.
    public var nextGeneration: Int { max(generation, spentGeneration ?? 0) + 1 }

    /// The initiator name this incarnation logs in with.
    public var initiator: String {
        Naming.incarnationIQN(node: node, vm: name, generation: generation)
    }
}

/// The catalog's record of a virtual cluster: desired state plus what was planned for it.
public struct VirtualCluster: Codable, Sendable, Equatable {
    public var spec: ClusterSpec
    public var state: ClusterState
    public var network: ClusterNetwork
    public var vms: [VirtualMachine]
    public var createdAt: Date
    public var updatedAt: Date
    /// Why the last operation failed, when it did.
    public var message: String?

    public init(
        spec: ClusterSpec, state: ClusterState, network: ClusterNetwork, vms: [VirtualMachine], createdAt: Date,
        updatedAt: Date, message: String? = nil
    ) {
        self.spec = spec
        self.state = state
        self.network = network
        self.vms = vms
        self.createdAt = createdAt
        self.updatedAt = updatedAt
        self.message = message
    }

    public var name: String { spec.name }
}

/// A lifecycle operation in progress. It is written before the first host change and
/// removed after the last, so a restarted vcd knows what to finish or undo.
public struct ClusterOperation: Codable, Sendable, Equatable {
    /// `recover` places again and starts the VMs whose node died (`NodeLoss`), once their
    /// incarnations are fenced at the storage.
    ///
    /// `migrate` moves running VMs to other nodes while their guests run (a drain); the
    /// cluster record places them at their destination from the start, and `origins`
    /// says where each one ran before.
    public enum Kind: String, Codable, Sendable {
        case create, destroy, suspend, resume, recover, migrate

        /// "created", "suspended", …: what the log says once it is done.
        public var done: String {
            switch self {
            case .create, .resume, .migrate: rawValue + "d"
            case .destroy, .suspend, .recover: rawValue + "ed"
            }
        }
    }

    /// Where a migrating VM ran: its node and the generation of its incarnation there.
    public struct Origin: Codable, Sendable, Equatable {
        public var node: String
        public var generation: Int

        public init(node: String, generation: Int) {
            self.node = node
            self.generation = generation
        }

        /// The initiator name of the incarnation on its origin.
        public func initiator(vm: String) -> String {
            Naming.incarnationIQN(node: node, vm: vm, generation: generation)
        }
    }

    public var id: String
    public var kind: Kind
    public var cluster: String
    public var node: String
    public var startedAt: Date
    /// The VMs a recovery places again and starts, or a migration moves (nil for every
    /// other kind).
    public var vms: [String]?
    /// Where each VM of a migration ran before, by VM.
    public var origins: [String: Origin]?

    public init(
        id: String, kind: Kind, cluster: String, node: String, startedAt: Date, vms: [String]? = nil,
        origins: [String: Origin]? = nil
    ) {
        self.id = id
        self.kind = kind
        self.cluster = cluster
        self.node = node
        self.startedAt = startedAt
        self.vms = vms
        self.origins = origins
    }

    /// What a restarted vcd does with an operation it finds unfinished: a create that
    /// did not complete is undone (never a half-created cluster), everything else is
    /// finished, because its steps are idempotent.
    public var recovery: Recovery {
        switch kind {
        case .create: return .rollBack
        case .destroy, .suspend, .resume, .recover, .migrate: return .rollForward
        }
    }

    public enum Recovery: Equatable, Sendable { case rollBack, rollForward }
}

/// How a node runs guests: KVM when it proved to work, TCG otherwise.
public struct Accelerator: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable { case kvm, tcg }
    public var kind: Kind
    /// Why this one was chosen, in words (e.g. "KVM probe timed out after 20 s").
    public var reason: String

    public init(kind: Kind, reason: String) {
        self.kind = kind
        self.reason = reason
    }
}

/// What a node does for the cluster. Every node runs the same vcd; its roles come from its
/// configuration (compute, storage) or from the etcd membership (etcd).
public enum NodeRole: String, Codable, Sendable, CaseIterable, Comparable {
    case compute, storage, etcd
    public static func < (a: NodeRole, b: NodeRole) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }
}

/// How the cluster sees a node: alive (its lease holds) and taking VMs, alive but closed
/// to new VMs, or known but without a lease.
public enum NodeState: String, Codable, Sendable, CaseIterable { case ready, cordoned, dead }

/// A node's advertisement in the catalog, kept alive by its lease.
public struct NodeRecord: Codable, Sendable, Equatable {
    public var name: String
    public var initiator: String
    /// Where the other nodes and `vc` reach its API.
    public var api: String
    public var capacity: NodeCapacity
    public var accelerator: Accelerator
    public var version: String
    public var startedAt: Date
    public var roles: [NodeRole]
    /// Its address on the node network (VXLAN tunnels end there); nil on a single node.
    public var underlay: String?
    /// The iSCSI portal of a storage node, as compute nodes reach it.
    public var portal: String?
    /// The machine that registered it (an id vcd makes once in its state directory): a
    /// second machine given the same name is refused while the first one is alive. Nil in
    /// records written before it was kept.
    public var machine: String?

    public init(
        name: String, initiator: String, api: String, capacity: NodeCapacity, accelerator: Accelerator, version: String,
        startedAt: Date, roles: [NodeRole] = [.compute, .storage], underlay: String? = nil, portal: String? = nil,
        machine: String? = nil
    ) {
        self.name = name
        self.initiator = initiator
        self.api = api
        self.capacity = capacity
        self.accelerator = accelerator
        self.version = version
        self.startedAt = startedAt
        self.roles = roles
        self.underlay = underlay
        self.portal = portal
        self.machine = machine
    }

    enum CodingKeys: String, CodingKey {
        case name, initiator, api, capacity, accelerator, version, startedAt, roles, underlay, portal, machine
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        initiator = try c.decode(String.self, forKey: .initiator)
        api = try c.decode(String.self, forKey: .api)
        capacity = try c.decode(NodeCapacity.self, forKey: .capacity)
        accelerator = try c.decode(Accelerator.self, forKey: .accelerator)
        version = try c.decode(String.self, forKey: .version)
        startedAt = try c.decode(Date.self, forKey: .startedAt)
        roles = try c.decodeIfPresent([NodeRole].self, forKey: .roles) ?? [.compute, .storage]
        underlay = try c.decodeIfPresent(String.self, forKey: .underlay)
        portal = try c.decodeIfPresent(String.self, forKey: .portal)
        machine = try c.decodeIfPresent(String.self, forKey: .machine)
    }

    public func has(_ role: NodeRole) -> Bool { roles.contains(role) }
}
