/// The HTTP API between `vc`/`vcnode` and `vcd`. Long operations answer with a stream of
/// newline-delimited `OperationEvent`s, so that a client shows progress and still gets a
/// typed result or error at the end. An operation goes on if its client goes away.
public enum API {
    public static let version = "v1"
    public static let defaultPort = 7480
    public static let defaultSocket = "/run/peerless/vcd.sock"
    /// Where vcd keeps the bearer token its TCP listener requires (mode 0600). The Unix
    /// socket needs none: its file mode keeps other users out.
    public static let defaultTokenFile = "/var/lib/peerless/api-token"
    public static let streamContentType = "application/x-ndjson"
}

public struct ImportImageRequest: Codable, Sendable, Equatable {
    public var name: String
    /// A raw or qcow2 file that vcd's node can read.
    public var path: String

    public init(name: String, path: String) {
        self.name = name
        self.path = path
    }
}

/// A failure as the API reports it: a stable code for scripts, one line for people.
public struct APIError: Codable, Sendable, Equatable, Error, CustomStringConvertible {
    public var code: String
    public var message: String

    public init(code: String, message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}

/// One line of a long operation's response stream.
public struct OperationEvent: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable { case step, progress, done, failed }

    public var kind: Kind
    public var message: String?
    /// Progress in bytes or steps.
    public var completed: UInt64?
    public var total: UInt64?
    public var error: APIError?
    public var cluster: VirtualCluster?
    public var image: GoldenImage?

    public init(
        kind: Kind, message: String? = nil, completed: UInt64? = nil, total: UInt64? = nil, error: APIError? = nil,
        cluster: VirtualCluster? = nil, image: GoldenImage? = nil
    ) {
        self.kind = kind
        self.message = message
        self.completed = completed
        self.total = total
        self.error = error
        self.cluster = cluster
        self.image = image
    }

    public static func step(_ message: String, completed: Int? = nil, total: Int? = nil) -> OperationEvent {
        OperationEvent(
            kind: .step, message: message, completed: completed.map(UInt64.init), total: total.map(UInt64.init))
    }
}

/// What `vcnode status` and `vc node list` show about a node.
public struct NodeStatus: Codable, Sendable, Equatable {
    public var record: NodeRecord
    public var daemons: [DaemonHealth]
    /// nil on a node without the storage role: its disks are on the storage node.
    public var pool: PoolStatus?
    /// Counts from etcd (`clusters`, `committedMemoryMiB`) and libvirtd (`runningVMs`);
    /// nil when that daemon did not answer: a failure must never read as an empty node.
    public var clusters: Int?
    public var runningVMs: Int?
    public var committedMemoryMiB: Int?

    public init(
        record: NodeRecord, daemons: [DaemonHealth], pool: PoolStatus?, clusters: Int?, runningVMs: Int?,
        committedMemoryMiB: Int?
    ) {
        self.record = record
        self.daemons = daemons
        self.pool = pool
        self.clusters = clusters
        self.runningVMs = runningVMs
        self.committedMemoryMiB = committedMemoryMiB
    }

    enum CodingKeys: String, CodingKey {
        case record, daemons, pool, clusters, runningVMs, committedMemoryMiB
    }

    /// Writes an unknown count as `null` rather than leaving the key out, so that a script
    /// reading the JSON sees the field is unknown, not that this version lacks it.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(record, forKey: .record)
        try c.encode(daemons, forKey: .daemons)
        try c.encode(pool, forKey: .pool)
        try c.encode(clusters, forKey: .clusters)
        try c.encode(runningVMs, forKey: .runningVMs)
        try c.encode(committedMemoryMiB, forKey: .committedMemoryMiB)
    }
}

public struct DaemonHealth: Codable, Sendable, Equatable {
    public var name: String
    public var healthy: Bool
    public var detail: String

    public init(name: String, healthy: Bool, detail: String) {
        self.name = name
        self.healthy = healthy
        self.detail = detail
    }
}

public struct PoolStatus: Codable, Sendable, Equatable {
    public var path: String
    public var filesystem: String
    /// "loop image FILE" for the embedded default, "directory" otherwise.
    public var backing: String
    public var sizeBytes: UInt64
    public var freeBytes: UInt64

    public init(path: String, filesystem: String, backing: String, sizeBytes: UInt64, freeBytes: UInt64) {
        self.path = path
        self.filesystem = filesystem
        self.backing = backing
        self.sizeBytes = sizeBytes
        self.freeBytes = freeBytes
    }
}

/// Per-VM runtime view merged into `vc cluster show`.
public struct VMStatus: Codable, Sendable, Equatable {
    public var name: String
    public var ip: String
    public var mac: String
    public var node: String
    /// libvirt's state: running, shut off, paused, saved, missing.
    public var domain: String
    public var disk: String

    public init(name: String, ip: String, mac: String, node: String, domain: String, disk: String) {
        self.name = name
        self.ip = ip
        self.mac = mac
        self.node = node
        self.domain = domain
        self.disk = disk
    }
}

public struct ClusterStatus: Codable, Sendable, Equatable {
    public var cluster: VirtualCluster
    public var vms: [VMStatus]
    /// The operation running on it now, if any.
    public var operation: ClusterOperation?

    public init(cluster: VirtualCluster, vms: [VMStatus], operation: ClusterOperation?) {
        self.cluster = cluster
        self.vms = vms
        self.operation = operation
    }
}

/// One row of `vc node list`: a node the cluster knows, how it stands, and what it holds.
public struct NodeSummary: Codable, Sendable, Equatable {
    public var record: NodeRecord
    public var state: NodeState
    public var roles: [NodeRole]
    public var committedMiB: Int
    public var vms: Int
    /// Why it was cordoned, when it is.
    public var cordonReason: String?

    public init(
        record: NodeRecord, state: NodeState, roles: [NodeRole], committedMiB: Int, vms: Int,
        cordonReason: String? = nil
    ) {
        self.record = record
        self.state = state
        self.roles = roles
        self.committedMiB = committedMiB
        self.vms = vms
        self.cordonReason = cordonReason
    }
}

/// `POST /v1/nodes/NAME/cordon`: close a node to new VMs.
public struct CordonRequest: Codable, Sendable, Equatable {
    /// Why, as `vc node list` shows it.
    public var reason: String?
    public init(reason: String? = nil) { self.reason = reason }
}

/// `POST /v1/nodes/NAME/drain`: move every VM off a node while it runs.
public struct DrainRequest: Codable, Sendable, Equatable {
    /// Suspend the clusters whose VMs fit on no other node, instead of refusing.
    public var force: Bool?
    public init(force: Bool? = nil) { self.force = force }
}

/// `POST /v1/nodes/NAME/join`, to NAME's own vcd: give it an etcd seat when the cluster
/// needs one, after taking `replacing` out.
public struct JoinRequest: Codable, Sendable, Equatable {
    public var replacing: String?
    public init(replacing: String? = nil) { self.replacing = replacing }
}

/// `DELETE /v1/nodes/NAME`: what taking a node out did.
public struct NodeRemovedResponse: Codable, Sendable, Equatable {
    public var node: String
    /// The node's etcd member that was removed first, when it had one.
    public var etcdMember: String?
    /// etcd's voting members after the removal, and how many of them answered.
    public var etcdVoters: Int
    public var etcdHealthyVoters: Int
    public var message: String

    public init(node: String, etcdMember: String?, etcdVoters: Int, etcdHealthyVoters: Int, message: String) {
        self.node = node
        self.etcdMember = etcdMember
        self.etcdVoters = etcdVoters
        self.etcdHealthyVoters = etcdHealthyVoters
        self.message = message
    }
}
