import Foundation
import ISCSI
import Logging
import VCCatalog
import VCHost
import VCModel
import VCStorage

/// Golden images: import through iSCSI into the pool, list, delete, from any node.
///
/// The node that takes an import reads the file (the path is on that node) and writes it
/// over iSCSI into a temporary target of the storage node, exactly as it would write any
/// disk: the pool is only ever written by the storage node's tgtd. What only the storage
/// node can do (allocate the file, export and remove the target with its CHAP account,
/// check free space, remove an image) is `ImageStore`'s, run here on the storage node and
/// asked through the internal API everywhere else.
public struct ImageLibrary: Sendable {
    let node: PeerNode

    public init(node: PeerNode) { self.node = node }

    public func list() async throws(DaemonError) -> [GoldenImage] {
        do {
            return try await node.catalog.images().sorted { $0.name < $1.name }
        } catch {
            throw DaemonError.from(error)
        }
    }

    public func importImage(_ request: ImportImageRequest) async throws(DaemonError) -> AsyncStream<OperationEvent> {
        let image: GoldenImage
        let facts: ImageFacts
        do {
            try NameRule.checkImage(request.name)
            guard request.path.hasPrefix("/") else {
                throw DaemonError.invalid("image path '\(request.path)' must be absolute")
            }
            if try await node.catalog.image(request.name) != nil {
                throw CatalogError.alreadyExists(kind: "image", name: request.name)
            }
            do {
                facts = try await ImageInspector.inspect(request.path)
            } catch .unreadable(let path, let reason) {
                throw DaemonError.invalid(
                    "cannot read \(path) on node \(node.name): \(reason); the file must be on the node whose vcd takes the import"
                )
            }
            image = GoldenImage(
                name: request.name, state: .importing, sourceFormat: facts.format,
                sizeBytes: ImageImport.lunBytes(virtualSize: facts.virtualSize),
                file: GoldenImage.file(for: request.name), node: node.name, importedAt: node.now())
            guard await node.locks.tryLock(Self.lockName(request.name), as: .operation) else {
                throw DaemonError.conflict("image '\(request.name)' is being imported already")
            }
            do {
                try await node.catalog.createImage(image)
            } catch {
                await node.locks.unlock(Self.lockName(request.name))
                throw error
            }
        } catch {
            throw DaemonError.from(error)
        }
        // Before the stream starts, so a pool without room or a storage node that does not
        // answer is refused in the request's own answer, and leaves nothing.
        let grant: ImageStore.Grant
        do {
            grant = try await openOnStorage(image.name)
        } catch {
            if case .noStorageNode = error {
                // Nothing was asked of any storage node: only the key is there to remove.
                try? await node.catalog.deleteImage(image.name)
            } else {
                await discard(image)
            }
            await node.locks.unlock(Self.lockName(image.name))
            throw error.reason
        }
        let (stream, events) = AsyncStream<OperationEvent>.makeStream()
        // Tracked like cluster operations, so a graceful stop waits for the copy instead of
        // shutting the iSCSI threads down under it.
        let started = node.operations.start {
            await run(image, source: request.path, facts: facts, grant: grant, events: events)
            events.finish()
            await node.locks.unlock(Self.lockName(image.name))
        }
        guard started else {
            await discard(image)
            await node.locks.unlock(Self.lockName(image.name))
            throw .unavailable(ClusterLifecycle.stoppingMessage)
        }
        return stream
    }

    private func run(
        _ image: GoldenImage, source: String, facts: ImageFacts, grant: ImageStore.Grant,
        events: AsyncStream<OperationEvent>.Continuation
    ) async {
        let started = ContinuousClock.now
        do {
            events.yield(OperationEvent(kind: .progress, message: "writing", completed: 0, total: image.sizeBytes))
            if let delay = node.configuration.testing.stepDelayMilliseconds {
                // Crash tests kill the importing node while its import is open.
                try await Task.sleep(for: .milliseconds(delay))
            }
            switch facts.format {
            case "qcow2": try await convertQcow2(source, grant: grant, total: image.sizeBytes, events: events)
            default: try await copyRaw(source, grant: grant, length: facts.virtualSize, events: events)
            }
            try await closeOnStorage(image.name)
            guard var current = try await node.catalog.image(image.name) else {
                throw CatalogError.notFound(kind: "image", name: image.name)
            }
            current.value.state = .ready
            current.value.importedAt = node.now()
            try await node.catalog.update(current)
            let seconds = (ContinuousClock.now - started).components
            node.logger.info(
                "imported",
                metadata: ["image": "\(image.name)", "bytes": "\(image.sizeBytes)", "seconds": "\(seconds.seconds)"])
            events.yield(OperationEvent(kind: .done, message: "image \(image.name) is ready", image: current.value))
        } catch {
            let reason = DaemonError.from(error)
            node.logger.error("import failed", metadata: ["image": "\(image.name)", "error": "\(reason)"])
            await discard(image)
            events.yield(
                OperationEvent(
                    kind: .failed,
                    error: APIError(code: reason.code, message: "import of \(image.name) failed: \(reason)")))
        }
    }

    private func copyRaw(
        _ source: String, grant: ImageStore.Grant, length: UInt64,
        events: AsyncStream<OperationEvent>.Continuation
    ) async throws {
        let fd = open(source, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw StorageError.unreadable(path: source, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        // Tell the kernel we read it once, front to back.
        _ = posix_fadvise(fd, 0, 0, Int32(POSIX_FADV_SEQUENTIAL))
        let total = length
        _ = try await node.iscsi.withSession(grant.target, chap: grant.chap) { session in
            let capacity = try session.readCapacity()
            var reported: UInt64 = 0
            return try session.copy(fromFile: fd, length: total, blockSize: capacity.blockSize) { done in
                // Every 1% is plenty for a progress bar.
                if done == total || done - reported >= max(total / 100, 1 << 20) {
                    reported = done
                    events.yield(OperationEvent(kind: .progress, completed: done, total: total))
                }
            }
        }
    }

    /// qcow2 needs decoding; QEMU's own libiscsi driver writes it into the target. The CHAP
    /// password reaches qemu-img through a secret object read from a root-only file, never
    /// on its command line.
    private func convertQcow2(
        _ source: String, grant: ImageStore.Grant, total: UInt64, events: AsyncStream<OperationEvent>.Continuation
    ) async throws {
        let secretFile = importSecretFile(grant.iqn)
        try HostFiles.write(secretFile, grant.password, mode: 0o600)
        defer { unlink(secretFile) }
        let target =
            "driver=iscsi,transport=tcp,portal=\(grant.portal),target=\(grant.iqn),lun=1,initiator-name=\(node.initiator),user=\(grant.user),password-secret=chap"
        try await HostCommand.run(
            "qemu-img",
            [
                "convert", "-n", "-f", "qcow2", "--object", "secret,id=chap,file=\(secretFile)",
                "--target-image-opts", source, target,
            ],
            timeout: .seconds(6 * 3600), logger: node.logger)
        events.yield(OperationEvent(kind: .progress, completed: total, total: total))
    }

    /// Where qemu-img reads an import's one-time CHAP password (root only; removed after the
    /// import, and by `discard` when a crash skipped that).
    private func importSecretFile(_ iqn: String) -> String {
        "\(node.configuration.stateDirectory)/import-\(iqn.split(separator: ":").last ?? "image").secret"
    }

    /// Removes an import's secret file here, and its target, account, pool file and catalog
    /// key on the storage node (the key last, only when the file is gone). Idempotent. When
    /// the storage node cannot do it now, the key stays and `recover` tries again.
    func discard(_ image: GoldenImage) async {
        unlink(importSecretFile(Naming.importIQN(image: image.name)))
        do {
            try await removeOnStorage(image.name, importer: image.node)
        } catch {
            node.logger.error(
                "cannot remove an image's import yet", metadata: ["image": "\(image.name)", "error": "\(error)"])
        }
    }

    public func delete(_ name: String) async throws(DaemonError) {
        do {
            try NameRule.checkImage(name)
            guard let image = try await node.catalog.image(name)?.value else {
                throw CatalogError.notFound(kind: "image", name: name)
            }
            let users = try await node.catalog.clusters().map(\.value).filter { $0.spec.image == name }.map(\.name)
            guard users.isEmpty else {
                throw DaemonError.conflict(
                    "image '\(name)' is used by cluster(s) \(users.joined(separator: ", ")); destroy them first")
            }
            guard image.state == .ready else { throw DaemonError.conflict("image '\(name)' is still being imported") }
            try await removeOnStorage(name, importer: nil)
        } catch {
            throw DaemonError.from(error)
        }
    }

    /// Discards the imports nothing will finish: this node's own that no task of this vcd
    /// runs (a previous vcd's, or one whose discard could not reach the storage node), and,
    /// on the storage node, those of importers that hold no lease any more.
    func recover() async {
        // Not before the node's name is known to be this machine's: another machine's
        // imports under it would be discarded while they run.
        guard await node.lease.nameTaken == false else { return }
        guard let images = try? await node.catalog.images(), images.contains(where: { $0.state == .importing })
        else { return }
        let live = try? await Set(node.catalog.nodes().map(\.name))
        let isStorageNode = node.has(.storage) ? (try? await node.storageNode().name) == node.name : false
        for image in ImageImport.orphans(images, node: node.name, isStorageNode: isStorageNode, live: live) {
            guard await node.locks.tryLock(Self.lockName(image.name), as: .operation) else { continue }
            node.logger.warning(
                "discarding an interrupted import", metadata: ["image": "\(image.name)", "node": "\(image.node)"])
            await discard(image)
            await node.locks.unlock(Self.lockName(image.name))
        }
    }

    // MARK: - the storage node's share

    /// Why an import could not be opened: no storage node to ask, or its refusal.
    private enum OpenFailure: Error {
        case noStorageNode(DaemonError)
        case refused(DaemonError)

        var reason: DaemonError {
            switch self {
            case .noStorageNode(let e), .refused(let e): return e
            }
        }
    }

    private func openOnStorage(_ image: String) async throws(OpenFailure) -> ImageStore.Grant {
        let storage: NodeRecord
        do {
            storage = try await storageNode()
        } catch {
            throw .noStorageNode(error)
        }
        do {
            if storage.name == node.name { return try await ImageStore(node: node).open(image, for: node.name) }
            return try await node.peers.openImport(image, importer: node.name, on: storage)
        } catch {
            throw .refused(error)
        }
    }

    private func closeOnStorage(_ image: String) async throws(DaemonError) {
        let storage = try await storageNode()
        if storage.name == node.name { return try await ImageStore(node: node).close(image, for: node.name) }
        try await node.peers.closeImport(image, importer: node.name, on: storage)
    }

    private func removeOnStorage(_ image: String, importer: String?) async throws(DaemonError) {
        let storage = try await storageNode()
        if storage.name == node.name { return try await ImageStore(node: node).remove(image, importer: importer) }
        try await node.peers.removeImage(image, importer: importer, on: storage)
    }

    private func storageNode() async throws(DaemonError) -> NodeRecord {
        do {
            return try await node.storageNode()
        } catch {
            throw DaemonError.from(error)
        }
    }

    /// Image locks share the table with clusters; `/` keeps the names apart.
    static func lockName(_ image: String) -> String { "image/\(image)" }
}
