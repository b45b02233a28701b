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

    public var name: String { configuration.node }
    public var initiator: String { Naming.initiatorIQN(node: name) }

    public var portal: ISCSIPortal {
        let parts = configuration.iscsi.portal.split(separator: ":")
        return ISCSIPortal(host: String(parts[0]), port: parts.count > 1 ? Int(parts[1]) ?? 3260 : 3260)
    }

    public var consoleDirectory: String { "\(configuration.stateDirectory)/consoles" }
    public var networkDirectory: String { "\(configuration.stateDirectory)/net" }

    public func consolePath(cluster: String, vm: String) -> String { "\(consoleDirectory)/\(cluster)/\(vm).log" }

    public func target(iqn: String) -> ISCSITarget { ISCSITarget(portal: configuration.iscsi.portal, iqn: iqn, lun: 1) }

    public func now() -> Date { Date() }

    /// Memory promised to clusters whose VMs run (or are about to run) on this node.
    public func committedMemoryMiB(excluding: String? = nil) async throws(CatalogError) -> Int {
        try await catalog.clusters().map(\.value)
            .filter { $0.name != excluding && $0.vms.contains { $0.node == name } }
            .filter { $0.state != .suspended }
            .reduce(0) { $0 + $1.spec.totalMemoryMiB }
    }
}
