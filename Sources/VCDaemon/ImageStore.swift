import Foundation
import ISCSI
import VCModel
import VCStorage

/// The storage node's share of golden images: it allocates an import's file in its pool,
/// exposes it through a temporary target that admits only the importing node's initiator
/// with a CHAP account made for that import, removes the target when the write is done,
/// and removes images. Only the storage node runs it, for itself (`ImageLibrary` on a node
/// with the role) or for another node that asked through the internal API; the pool is
/// only ever written by its tgtd. Each call checks what it is asked against the catalog.
struct ImageStore: Sendable {
    let node: PeerNode

    /// The temporary target a node writes an import into.
    struct Grant: Codable, Sendable {
        var iqn: String
        var portal: String
        var user: String
        var password: String

        var chap: CHAPCredentials { CHAPCredentials(user: user, password: password) }
        var target: ISCSITarget { ISCSITarget(portal: portal, iqn: iqn, lun: 1) }
    }

    /// Allocates the file of `image`, which `importer` recorded as importing, and exports
    /// it to `importer` only. Leaves nothing when it fails.
    func open(_ image: String, for importer: String) async throws(DaemonError) -> Grant {
        do {
            try await checkStorageNode()
            try NameRule.checkImage(image)
            let record = try await node.catalog.image(image)?.value
            let opening = try ImageImport.opening(
                image: image, importer: importer, record: record, freeBytes: try node.pool.status().freeBytes,
                storageNode: node.name)
            // A password made for this import alone, forgotten with its target.
            var random = SystemRandomNumberGenerator()
            let chap = CHAPCredentials(user: opening.chapUser, password: ClusterSecrets.password(using: &random))
            try node.pool.createFile(opening.file, size: opening.sizeBytes)
            do {
                _ = try await node.exporter.export(
                    iqn: opening.iqn, file: node.pool.path(opening.file), initiators: [opening.initiator], chap: chap)
            } catch {
                // A half-built target is removed by the exporter; its account may remain.
                try? await node.exporter.unexport(iqn: opening.iqn, account: opening.chapUser)
                try? node.pool.remove(opening.file)
                throw error
            }
            node.logger.info(
                "import opened", metadata: ["image": "\(image)", "node": "\(importer)", "iqn": "\(opening.iqn)"])
            return Grant(
                iqn: opening.iqn, portal: node.configuration.iscsi.portal, user: chap.user, password: chap.password)
        } catch {
            throw DaemonError.from(error)
        }
    }

    /// Removes the import's target and account once its write is complete. Idempotent.
    func close(_ image: String, for importer: String) async throws(DaemonError) {
        do {
            try await checkStorageNode()
            try NameRule.checkImage(image)
            if let record = try await node.catalog.image(image)?.value, record.state == .importing,
                record.node != importer
            {
                throw DaemonError.conflict("image '\(image)' is being imported by node \(record.node), not \(importer)")
            }
            try await node.exporter.unexport(
                iqn: Naming.importIQN(image: image), account: Naming.chapUser(importing: image))
        } catch {
            throw DaemonError.from(error)
        }
    }

    /// Removes an image's import target, account, pool file and catalog key, in that order:
    /// the key goes last, so a file never stays without its record. `importer` names the
    /// node discarding its own import; nil deletes a ready image no cluster uses. Idempotent.
    func remove(_ image: String, importer: String?) async throws(DaemonError) {
        do {
            try await checkStorageNode()
            try NameRule.checkImage(image)
            let record = try await node.catalog.image(image)?.value
            if let record {
                switch (record.state, importer) {
                case (.ready, nil):
                    let users = try await node.catalog.clusters().map(\.value).filter { $0.spec.image == image }
                    guard users.isEmpty else {
                        throw DaemonError.conflict(
                            "image '\(image)' is used by cluster(s) \(users.map(\.name).joined(separator: ", ")); destroy them first"
                        )
                    }
                case (.importing, nil):
                    throw DaemonError.conflict("image '\(image)' is still being imported")
                case (.ready, .some):
                    throw DaemonError.conflict("image '\(image)' is ready: it is deleted with 'vc image delete'")
                case (.importing, let importer?) where importer != record.node:
                    throw DaemonError.conflict(
                        "image '\(image)' is being imported by node \(record.node), not \(importer)")
                case (.importing, .some):
                    break
                }
            }
            do {
                try await node.exporter.unexport(
                    iqn: Naming.importIQN(image: image), account: Naming.chapUser(importing: image))
            } catch {
                // A ready image has no import target left to remove (its import closed it),
                // so a tgtd that does not answer keeps no delete from going on.
                guard importer == nil else { throw error }
                node.logger.warning(
                    "cannot check for an old import target", metadata: ["image": "\(image)", "error": "\(error)"])
            }
            let file = GoldenImage.file(for: image)
            try await node.pool.offload { pool throws(StorageError) in try pool.remove(file) }
            if record != nil { try await node.catalog.deleteImage(image) }
        } catch {
            throw DaemonError.from(error)
        }
    }

    /// Only the storage node every node picks may touch its pool for them: a second node
    /// with the role must not split the images between two pools.
    private func checkStorageNode() async throws {
        guard node.has(.storage) else { throw DaemonError.invalid("node \(node.name) has no storage role") }
        let storage = try await node.storageNode()
        guard storage.name == node.name else {
            throw DaemonError.invalid("node \(node.name) is not the storage node; images are kept by \(storage.name)")
        }
    }
}
