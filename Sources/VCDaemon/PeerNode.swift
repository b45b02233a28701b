import Foundation
import ISCSI
import Libvirt
import Logging
import VCCatalog
import VCModel
import VCStorage

/// Everything this node's vcd works with, made once at start and shared by the services.
public struct PeerNode: Sendable {
    public let configuration: DaemonConfiguration
    public let logger: Logger
    public let catalog: Catalog
    public let hypervisor: Hypervisor
    public let iscsi: ISCSIClient
    public let exporter: TargetExporter
    public let pool: StoragePool
    public let addresses: AddressPlan
    public let accelerator: Accelerator
    public let capacity: NodeCapacity
    /// Which clusters and images a task of this vcd is working on.
    public let locks = ClusterLocks()
    /// Makes "does it fit" and "now it is committed" one step on this node.
    public let admission = AdmissionGate()
    /// The lifecycle operations running here, drained on a graceful stop.
    public let operations = OperationTasks()
    /// This machine's id (`NodeRecord.machine`).
    public let machine: String
    /// The node lease this vcd holds now, if any (kept by `NodeLease`).
    public let lease = HeldLease()
    /// The live nodes, as the catalog lists them.
    let directory: NodeDirectory
    /// Calls to the other nodes' vcd.
    let peers: PeerCalls

    init(
        configuration: DaemonConfiguration, logger: Logger, catalog: Catalog, hypervisor: Hypervisor,
        iscsi: ISCSIClient, exporter: TargetExporter, pool: StoragePool, addresses: AddressPlan,
        accelerator: Accelerator, capacity: NodeCapacity, token: String, machine: String
    ) {
        self.machine = machine
        self.configuration = configuration
        self.logger = logger
        self.catalog = catalog
        self.hypervisor = hypervisor
        self.iscsi = iscsi
        self.exporter = exporter
        self.pool = pool
        self.addresses = addresses
        self.accelerator = accelerator
        self.capacity = capacity
        directory = NodeDirectory(catalog: catalog)
        peers = PeerCalls(token: token)
    }

    public func has(_ role: NodeRole) -> Bool { configuration.has(role) }

    /// This node's advertisement in the catalog.
    public var record: NodeRecord {
        NodeRecord(
            name: name, initiator: initiator, api: configuration.advertisedAPI, capacity: capacity,
            accelerator: accelerator, version: Version.current, startedAt: Version.started,
            roles: configuration.roles.sorted(), underlay: configuration.network.underlay,
            portal: has(.storage) ? configuration.iscsi.portal : nil, machine: machine)
    }

    /// The node that holds the pool and the targets: this one when it has the role.
    /// Every node picks the same one (the lowest-named live node with the role), so a
    /// second storage node never splits the disks between two pools.
    func storageNode() async throws -> NodeRecord {
        var live = try await directory.live().values.filter { $0.has(.storage) && $0.name != name }
        if has(.storage) { live.append(record) }
        guard let storage = live.min(by: { $0.name < $1.name }) else {
            throw DaemonError.unavailable(
                "no storage node is up (no live node has the storage role); start the storage node's vcd")
        }
        return storage
    }

    /// The libvirt state of each named domain on this node ("missing" when undefined): what
    /// a status shows for the VMs placed here, and what other nodes ask for theirs.
    func domainStates(_ names: [String]) async throws -> [String: String] {
        try await hypervisor.run { conn in
            var out: [String: String] = [:]
            for name in names {
                out[name] = try conn.domain(named: name).map { try $0.state().rawValue } ?? "missing"
            }
            return out
        }
    }

    /// A live node's record, or nil when it has no lease.
    func liveNode(_ name: String) async throws -> NodeRecord? {
        if name == self.name { return record }
        return try await directory.live()[name]
    }

    /// The record node `name` wrote when it last registered, alive or not.
    func member(_ name: String) async throws -> NodeRecord? {
        try await catalog.members().first { $0.name == name }
    }

    public var name: String { configuration.node }
    public var initiator: String { Naming.initiatorIQN(node: name) }

    static func portal(_ text: String) -> ISCSIPortal {
        let parts = text.split(separator: ":")
        return ISCSIPortal(host: String(parts[0]), port: parts.count > 1 ? Int(parts[1]) ?? 3260 : 3260)
    }

    public var consoleDirectory: String { "\(configuration.stateDirectory)/consoles" }
    public var networkDirectory: String { "\(configuration.stateDirectory)/net" }

    public func consolePath(cluster: String, vm: String) -> String { "\(consoleDirectory)/\(cluster)/\(vm).log" }

    public func target(iqn: String) -> ISCSITarget { ISCSITarget(portal: configuration.iscsi.portal, iqn: iqn, lun: 1) }

    public func now() -> Date { Date() }

    /// Memory promised to clusters whose VMs run (or are about to run) on this node.
    public func committedMemoryMiB(excluding: String? = nil) async throws(CatalogError) -> Int {
        CommitmentLedger(summaries: try await catalog.clusterSummaries(), excluding: excluding).committedMiB(of: name)
    }
}
