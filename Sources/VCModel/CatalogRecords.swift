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

    public init(subnet: Int, bridge: String, cidr: String, gateway: String, prefixLength: Int, domain: String) {
        self.subnet = subnet
        self.bridge = bridge
        self.cidr = cidr
        self.gateway = gateway
        self.prefixLength = prefixLength
        self.domain = domain
    }
}

public struct VirtualMachine: Codable, Sendable, Equatable {
    public var name: String
    public var index: Int
    public var mac: String
    public var ip: String
    /// The node that runs it; its disk's target is bound to this node's initiator.
    public var node: String
    public var diskIQN: String
    /// Pool-relative path of its private copy-on-write disk.
    public var diskFile: String
    /// Pool-relative path of its memory image while the cluster is suspended.
    public var saveFile: String

    public init(
        name: String, index: Int, mac: String, ip: String, node: String, diskIQN: String, diskFile: String,
        saveFile: String
    ) {
        self.name = name
        self.index = index
        self.mac = mac
        self.ip = ip
        self.node = node
        self.diskIQN = diskIQN
        self.diskFile = diskFile
        self.saveFile = saveFile
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
    public enum Kind: String, Codable, Sendable { case create, destroy, suspend, resume }

    public var id: String
    public var kind: Kind
    public var cluster: String
    public var node: String
    public var startedAt: Date

    public init(id: String, kind: Kind, cluster: String, node: String, startedAt: Date) {
        self.id = id
        self.kind = kind
        self.cluster = cluster
        self.node = node
        self.startedAt = startedAt
    }

    /// What a restarted vcd does with an operation it finds unfinished: a create that
    /// did not complete is undone (never a half-created cluster), everything else is
    /// finished, because its steps are idempotent.
    public var recovery: Recovery {
        switch kind {
        case .create: return .rollBack
        case .destroy, .suspend, .resume: return .rollForward
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

/// A node's advertisement in the catalog, kept alive by its lease.
public struct NodeRecord: Codable, Sendable, Equatable {
    public var name: String
    public var initiator: String
    public var api: String
    public var capacity: NodeCapacity
    public var accelerator: Accelerator
    public var version: String
    public var startedAt: Date

    public init(
        name: String, initiator: String, api: String, capacity: NodeCapacity, accelerator: Accelerator, version: String,
        startedAt: Date
    ) {
        self.name = name
        self.initiator = initiator
        self.api = api
        self.capacity = capacity
        self.accelerator = accelerator
        self.version = version
        self.startedAt = startedAt
    }
}
