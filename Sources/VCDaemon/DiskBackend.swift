import ISCSI
import VCModel
import VCStorage

/// What the storage role does for VMs' disks, whatever keeps them. The steps (`snapshot`,
/// `export` and their undo), the size check before a start and the reconciler's view of
/// the exported disks go through this type only.
///
/// One backend exists: copy-on-write clones in a reflink pool, served by tgtd over iSCSI
/// (`TargetPoolBackend`). A second one (Ceph RBD, which QEMU opens natively) implements
/// the same calls with an RBD clone and a cephx key, and changes the domain's disk source;
/// nothing else has to know.
protocol DiskBackend: Sendable {
    /// A VM's private copy-on-write disk from a golden image (pool-relative paths).
    func makeDisk(_ disk: String, from image: String) async throws
    /// Removes a VM's disk and, once empty, the cluster's directory of disks. Idempotent.
    func removeDisk(_ disk: String, directory: String) async throws
    /// Opens a VM's disk to exactly one initiator name (its running incarnation), with the
    /// disk's own CHAP account. Idempotent; it replaces whoever was admitted before.
    func open(_ vm: VirtualMachine, chap: CHAPCredentials) async throws
    /// Opens a VM's disk to `initiators` together: a migrating VM's running incarnation
    /// and the one it moves to, which logs in before the first pauses. Idempotent.
    func open(_ vm: VirtualMachine, to initiators: [String], chap: CHAPCredentials) async throws
    /// Closes a VM's disk to everyone and removes its account. Idempotent.
    func close(iqn: String, account: String?) async throws
    /// The size of a VM's disk, in bytes.
    func diskBytes(_ disk: String) throws -> UInt64
    /// The disks that are open now, as the reconciler compares them with the catalog.
    func openDisks() async throws -> [ObservedNode.Target]
    /// Fences incarnations: no disk admits `initiators` any more, and whatever they still
    /// have open is cut off, checked gone before this returns. Idempotent.
    func fence(initiators: Set<String>) async throws
}

/// Reflink clones in the node's pool, exported by its tgtd.
struct TargetPoolBackend: DiskBackend {
    let pool: StoragePool
    let exporter: TargetExporter

    func makeDisk(_ disk: String, from image: String) async throws {
        try await pool.offload { pool throws(StorageError) in try pool.clone(image, to: disk) }
    }

    func removeDisk(_ disk: String, directory: String) async throws {
        try await pool.offload { pool throws(StorageError) in
            try pool.remove(disk)
            pool.removeDirectory(directory)
        }
    }

    func open(_ vm: VirtualMachine, chap: CHAPCredentials) async throws {
        _ = try await exporter.export(
            iqn: vm.diskIQN, file: pool.path(vm.diskFile), initiators: [vm.initiator], chap: chap)
    }

    func open(_ vm: VirtualMachine, to initiators: [String], chap: CHAPCredentials) async throws {
        _ = try await exporter.export(
            iqn: vm.diskIQN, file: pool.path(vm.diskFile), initiators: initiators, chap: chap)
    }

    func close(iqn: String, account: String?) async throws {
        try await exporter.unexport(iqn: iqn, account: account)
    }

    func diskBytes(_ disk: String) throws -> UInt64 { try pool.size(disk) }

    func fence(initiators: Set<String>) async throws {
        try await exporter.fence(initiators: initiators)
    }

    func openDisks() async throws -> [ObservedNode.Target] {
        try await exporter.targets().map {
            ObservedNode.Target(
                iqn: $0.iqn, initiators: Set($0.initiators), account: $0.accounts.first, file: $0.backingFiles.first)
        }
    }
}

extension PeerNode {
    /// This node's disks, when it has the storage role.
    var disks: any DiskBackend { TargetPoolBackend(pool: pool, exporter: exporter) }
}
