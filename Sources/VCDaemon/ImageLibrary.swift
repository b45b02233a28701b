import Foundation
import ISCSI
import Logging
import VCCatalog
import VCHost
import VCModel
import VCStorage

/// Golden images: import through iSCSI into the pool, list, delete.
///
/// An import writes the image through a temporary tgt target with libiscsi, exactly as a
/// node without the pool mounted would: the storage node's pool is only ever written by
/// its own tgtd.
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
            facts = try await ImageInspector.inspect(request.path)
            // LUNs are whole 512-byte blocks.
            let size = (facts.virtualSize + 511) / 512 * 512
            let free = try node.pool.status().freeBytes
            guard size < free else {
                throw DaemonError.invalid(
                    "image needs \(ByteSize.describe(bytes: size)) but the pool has \(ByteSize.describe(bytes: free)) free"
                )
            }
            image = GoldenImage(
                name: request.name, state: .importing, sourceFormat: facts.format, sizeBytes: size,
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
        let (stream, events) = AsyncStream<OperationEvent>.makeStream()
        // Tracked like cluster operations, so a graceful stop waits for the copy instead of
        // shutting the iSCSI threads down under it.
        let started = node.operations.start {
            await run(image, source: request.path, facts: facts, events: events)
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
        _ image: GoldenImage, source: String, facts: ImageFacts, events: AsyncStream<OperationEvent>.Continuation
    ) async {
        let iqn = Naming.importIQN(image: image.name)
        let started = ContinuousClock.now
        // The import target requires CHAP like every other, with a password made for this
        // import alone and forgotten with its target.
        var random = SystemRandomNumberGenerator()
        let chap = CHAPCredentials(
            user: Naming.chapUser(importing: image.name), password: ClusterSecrets.password(using: &random))
        do {
            try node.pool.createFile(image.file, size: image.sizeBytes)
            _ = try await node.exporter.export(
                iqn: iqn, file: node.pool.path(image.file), initiators: [node.initiator], chap: chap)
            events.yield(OperationEvent(kind: .progress, message: "writing", completed: 0, total: image.sizeBytes))
            switch facts.format {
            case "qcow2": try await convertQcow2(source, iqn: iqn, chap: chap, total: image.sizeBytes, events: events)
            default: try await copyRaw(source, iqn: iqn, chap: chap, length: facts.virtualSize, events: events)
            }
            try await node.exporter.unexport(iqn: iqn, account: chap.user)
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
        _ source: String, iqn: String, chap: CHAPCredentials, length: UInt64,
        events: AsyncStream<OperationEvent>.Continuation
    ) async throws {
        let fd = open(source, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw StorageError.unreadable(path: source, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        // Tell the kernel we read it once, front to back.
        _ = posix_fadvise(fd, 0, 0, Int32(POSIX_FADV_SEQUENTIAL))
        let total = length
        _ = try await node.iscsi.withSession(node.target(iqn: iqn), chap: chap) { session in
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
        _ source: String, iqn: String, chap: CHAPCredentials, total: UInt64,
        events: AsyncStream<OperationEvent>.Continuation
    ) async throws {
        let secretFile = importSecretFile(iqn)
        try HostFiles.write(secretFile, chap.password, mode: 0o600)
        defer { unlink(secretFile) }
        let target =
            "driver=iscsi,transport=tcp,portal=\(node.configuration.iscsi.portal),target=\(iqn),lun=1,initiator-name=\(node.initiator),user=\(chap.user),password-secret=chap"
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

    /// Removes an image's file, temporary target and catalog key. Idempotent. The key goes
    /// last and only when the file is gone, so that a file is never left without its record.
    func discard(_ image: GoldenImage) async {
        unlink(importSecretFile(Naming.importIQN(image: image.name)))
        try? await node.exporter.unexport(
            iqn: Naming.importIQN(image: image.name), account: Naming.chapUser(importing: image.name))
        let file = image.file
        do {
            try await node.pool.offload { pool throws(StorageError) in try pool.remove(file) }
        } catch {
            node.logger.error("cannot remove an image's file", metadata: ["file": "\(file)", "error": "\(error)"])
            return
        }
        try? await node.catalog.deleteImage(image.name)
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
            await discard(image)
        } catch {
            throw DaemonError.from(error)
        }
    }

    /// Imports a previous vcd of this node was running cannot be resumed: drop them. An
    /// import of this vcd holds its image's lock and is left alone.
    func recover() async {
        guard let images = try? await node.catalog.images() else { return }
        for image in images where image.state == .importing && image.node == node.name {
            guard await node.locks.tryLock(Self.lockName(image.name), as: .operation) else { continue }
            node.logger.warning("discarding an interrupted import", metadata: ["image": "\(image.name)"])
            await discard(image)
            await node.locks.unlock(Self.lockName(image.name))
        }
    }

    /// Image locks share the table with clusters; `/` keeps the names apart.
    static func lockName(_ image: String) -> String { "image/\(image)" }
}
