/// What an administrator asks for: `vc cluster create NAME --image I --vms N`.
public struct ClusterSpec: Codable, Sendable, Equatable {
    public var name: String
    public var image: String
    public var vms: Int
    public var vcpus: Int
    public var memoryMiB: Int
    /// Public keys handed to the guests as metadata (SMBIOS OEM strings).
    public var sshKeys: [String]
    /// How VMs are laid out over the nodes; spread when not given.
    public var placement: PlacementStrategy?
    /// Pins every VM to this node.
    public var node: String?

    public init(
        name: String, image: String, vms: Int, vcpus: Int = 1, memoryMiB: Int = 256, sshKeys: [String] = [],
        placement: PlacementStrategy? = nil, node: String? = nil
    ) {
        self.name = name
        self.image = image
        self.vms = vms
        self.vcpus = vcpus
        self.memoryMiB = memoryMiB
        self.sshKeys = sshKeys
        self.placement = placement
        self.node = node
    }

    /// Up to 200, so that a cluster network keeps addresses for its hosting nodes.
    public static let vmRange = 1...200
    public static let memoryRangeMiB = 64...(1024 * 1024)
    public static let vcpuRange = 1...256

    /// Checks what can be checked without looking at any node: names and absolute bounds.
    public func validate() throws(ModelError) {
        try NameRule.checkCluster(name)
        try NameRule.checkImage(image)
        guard Self.vmRange.contains(vms) else {
            throw .outOfRange(what: "the number of VMs", value: vms, range: Self.vmRange)
        }
        guard Self.vcpuRange.contains(vcpus) else {
            throw .outOfRange(what: "vCPUs per VM", value: vcpus, range: Self.vcpuRange)
        }
        guard Self.memoryRangeMiB.contains(memoryMiB) else {
            throw .outOfRange(what: "memory per VM (MiB)", value: memoryMiB, range: Self.memoryRangeMiB)
        }
        if let node { try NameRule.checkNode(node) }
        for key in sshKeys where key.contains("\n") || key.isEmpty {
            throw .invalidName(
                kind: "SSH key", name: String(key.prefix(20)), reason: "a key must be one non-empty line")
        }
    }

    public var totalMemoryMiB: Int { vms * memoryMiB }
}

/// How a cluster's VMs are laid out over the nodes: `spread` puts each on the node with the
/// most memory left, `pack` fills the fullest node that still fits first.
public enum PlacementStrategy: String, Codable, Sendable, CaseIterable { case spread, pack }

/// What a node can give to VMs.
public struct NodeCapacity: Codable, Sendable, Equatable {
    public var node: String
    public var cpus: Int
    public var memoryMiB: Int

    public init(node: String, cpus: Int, memoryMiB: Int) {
        self.node = node
        self.cpus = cpus
        self.memoryMiB = memoryMiB
    }

    /// Memory kept back for the host itself (libvirtd, QEMU's own overhead, tgtd, etcd).
    public var reservedMiB: Int { min(2048, max(256, memoryMiB / 8)) }

    /// Refuses a spec that cannot fit next to what the node already committed.
    public func admit(_ spec: ClusterSpec, committedMiB: Int) throws(ModelError) {
        guard spec.vcpus <= cpus else { throw .tooManyVCPUs(requested: spec.vcpus, nodeCPUs: cpus, node: node) }
        let available = memoryMiB - reservedMiB - committedMiB
        guard spec.totalMemoryMiB <= available else {
            throw .insufficientMemory(neededMiB: spec.totalMemoryMiB, availableMiB: max(0, available), node: node)
        }
    }
}
