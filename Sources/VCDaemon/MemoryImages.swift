import Foundation
import VCHost
import VCModel
import VCStorage

/// Memory images of suspended VMs live on the storage node, in its pool, so that a
/// suspended cluster resumes on any compute node, also after the node that suspended it
/// is gone. A compute node writes an image locally (libvirt saves only to a path, and
/// this kernel has no network filesystem), sends it to the storage node's vcd over HTTP,
/// and removes its copy; before a restore it fetches the image back. On a node that is
/// its own storage node the image is written straight into the pool.
struct MemoryImages: Sendable {
    let runner: StepRunner
    private var node: PeerNode { runner.node }

    /// Where this node keeps the image while it works on it.
    func localPath(_ m: VirtualMachine) -> String {
        node.has(.storage) ? node.pool.path(m.saveFile) : "\(node.configuration.stateDirectory)/\(m.saveFile)"
    }

    private func remotePath(_ m: VirtualMachine) -> String {
        "/\(API.version)/internal/saves/\(runner.cluster.name)/\(m.name)"
    }

    /// Sends a complete local image to the storage node and removes it here. Nothing to do
    /// on the storage node itself, or when there is no local image (sent already).
    func store(_ m: VirtualMachine) async throws {
        guard !node.has(.storage) else { return }
        let path = localPath(m)
        guard access(path, F_OK) == 0 else { return }
        let storage = try await node.storageNode()
        do {
            try await node.peers.client(storage).upload(remotePath(m), from: path, timeout: PeerCalls.stepTimeout)
        } catch {
            throw DaemonError.failed(
                "could not send \(m.name)'s memory image to storage node \(storage.name): \(error)")
        }
        unlink(path)
        rmdir(HostFiles.parent(path))
    }

    /// The local path of the VM's image, fetched from the storage node when needed; nil
    /// when there is none.
    func fetch(_ m: VirtualMachine) async throws -> String? {
        let path = localPath(m)
        if node.has(.storage) { return access(path, F_OK) == 0 ? path : nil }
        let storage = try await node.storageNode()
        try HostFiles.makeDirectories(HostFiles.parent(path))
        let partial = path + ".fetch"
        do {
            guard
                try await node.peers.client(storage).download(
                    remotePath(m), to: partial, timeout: PeerCalls.stepTimeout)
            else {
                unlink(partial)
                return access(path, F_OK) == 0 ? path : nil
            }
        } catch {
            unlink(partial)
            throw DaemonError.failed(
                "could not fetch \(m.name)'s memory image from storage node \(storage.name): \(error)")
        }
        guard rename(partial, path) == 0 else {
            throw DaemonError.failed("could not keep \(m.name)'s memory image: \(String(cString: strerror(errno)))")
        }
        return path
    }

    /// Removes every copy of the VM's image: here and on the storage node.
    func discard(_ m: VirtualMachine) async throws {
        let path = localPath(m)
        for p in [path, path + ".partial", path + ".fetch"] { unlink(p) }
        if node.has(.storage) {
            let (save, directory) = (m.saveFile, "saves/\(runner.cluster.name)")
            try await node.pool.offload { pool throws(StorageError) in
                try pool.remove(save)
                try pool.remove(save + ".partial")
                pool.removeDirectory(directory)
            }
            return
        }
        rmdir(HostFiles.parent(path))
        let storage = try await node.storageNode()
        do {
            let _: Done = try await node.peers.client(storage).delete(remotePath(m))
        } catch {
            throw DaemonError.failed(
                "could not remove \(m.name)'s memory image on storage node \(storage.name): \(error)")
        }
    }
}
