import Foundation
import ISCSI
import Libvirt
import Logging
import VCHost
import VCModel
import VCNetwork
import VCStorage

/// Carries out one step of a plan on this node, or undoes it. Every step can be run
/// again after a crash (a snapshot is only ever made by a create, which recovery undoes,
/// never redoes), and every undo tolerates a step that never happened, so recovery can
/// replay a whole plan.
struct StepRunner: Sendable {
    let node: PeerNode
    let cluster: VirtualCluster
    /// The golden image, needed only to make snapshots.
    let image: GoldenImage?
    /// The disks' CHAP passwords when the caller holds them (a create); read from the
    /// catalog otherwise.
    var secrets: ClusterSecrets? = nil

    private var logger: Logger {
        var l = node.logger
        l[metadataKey: "cluster"] = "\(cluster.name)"
        return l
    }

    private func vm(_ name: String) -> VirtualMachine {
        cluster.vms.first { $0.name == name }!
    }

    private var bridge: ClusterBridge { ClusterBridge(network: cluster.network, logger: logger) }

    var firewall: ClusterFirewall {
        ClusterFirewall(
            boundary: GuestBoundary(network: cluster.network, vms: cluster.vms), runDirectory: node.networkDirectory,
            logger: logger)
    }

    private var dhcp: DHCPServer {
        DHCPServer(
            table: DHCPTable(network: cluster.network, vms: cluster.vms, runDirectory: node.networkDirectory),
            logger: logger)
    }

    func perform(_ step: Step) async throws {
        try node.operations.checkStopping()
        if let delay = node.configuration.testing.stepDelayMilliseconds {
            try await Task.sleep(for: .milliseconds(delay))
        }
        logger.debug("step", metadata: ["step": "\(step)"])
        if let failing = node.configuration.testing.failStep, failing == step.description {
            throw DaemonError.failed("injected failure of step '\(failing)' (testing.failStep)")
        }
        switch step {
        case .firewall:
            try await firewall.ensure()
        case .bridge:
            try await bridge.ensure()
        case .overlay:
            break
        case .dhcp:
            try await dhcp.ensure()
        case .snapshot(let name):
            guard let image else { throw DaemonError.failed("no golden image given for \(name)'s snapshot") }
            let (source, disk) = (image.file, vm(name).diskFile)
            try await node.pool.offload { pool throws(StorageError) in try pool.clone(source, to: disk) }
        case .export(let name):
            let m = vm(name)
            _ = try await node.exporter.export(
                iqn: m.diskIQN, file: node.pool.path(m.diskFile), initiators: [Naming.initiatorIQN(node: m.node)],
                chap: try await credentials(name))
        case .verify(let name):
            let m = vm(name)
            let size = try node.pool.size(m.diskFile)
            let chap = try await credentials(name)
            do {
                _ = try await node.iscsi.verifyDisk(node.target(iqn: m.diskIQN), expectedBytes: size, chap: chap)
            } catch {
                throw DaemonError.failed("disk of \(name) does not answer as expected, VM not started: \(error)")
            }
        case .secret(let name):
            // QEMU reads the password from this root-only libvirt secret, never from the XML.
            let password = Array(try await credentials(name).password.utf8)
            try await node.hypervisor.run {
                try $0.defineISCSISecret(usage: Naming.chapSecretUsage(vm: name), value: password)
            }
        case .define(let name):
            let xml = document(vm(name)).xml
            try makeConsoleDirectory()
            _ = try await node.hypervisor.run { try $0.define(xml: xml) }
        case .start(let name):
            try await start(vm(name))
        case .release(let name):
            try await node.hypervisor.run { conn in
                guard let d = try conn.domain(named: name) else {
                    throw DaemonError.failed("domain \(name) is not defined")
                }
                if try d.state() == .paused { try d.resume() }
            }
        case .save(let name):
            try await save(vm(name))
        }
    }

    func undo(_ step: Step) async throws {
        try node.operations.checkStopping()
        if let delay = node.configuration.testing.stepDelayMilliseconds {
            try await Task.sleep(for: .milliseconds(delay))
        }
        logger.debug("undo", metadata: ["step": "\(step)"])
        switch step {
        case .firewall:
            try await firewall.remove()
        case .bridge:
            try await bridge.remove()
        case .overlay:
            break
        case .dhcp:
            await dhcp.remove()
        case .snapshot(let name):
            let (disk, directory) = (vm(name).diskFile, "disks/\(cluster.name)")
            try await node.pool.offload { pool throws(StorageError) in
                try pool.remove(disk)
                pool.removeDirectory(directory)
            }
        case .export(let name):
            try await node.exporter.unexport(iqn: vm(name).diskIQN, account: Naming.chapUser(vm: name))
        case .secret(let name):
            try await node.hypervisor.run { try $0.removeISCSISecret(usage: Naming.chapSecretUsage(vm: name)) }
        case .verify, .release:
            break
        case .define(let name):
            try await undefine(name)
            unlink(node.consolePath(cluster: cluster.name, vm: name))
            rmdir("\(node.consoleDirectory)/\(cluster.name)")
        case .start(let name), .save(let name):
            let m = vm(name)
            try await node.hypervisor.run { conn in
                guard let d = try conn.domain(named: name), Self.isOurs(d, cluster: cluster.name) else { return }
                if d.isActive { try d.destroy() }
            }
            let (save, directory) = (m.saveFile, "saves/\(cluster.name)")
            try await node.pool.offload { pool throws(StorageError) in
                try pool.remove(save)
                try pool.remove(save + ".partial")
                pool.removeDirectory(directory)
            }
        }
    }

    /// The CHAP credentials of a VM's disk: from the create that made them, else from the
    /// catalog. A cluster made before disks had secrets of their own has none and is refused.
    func credentials(_ vm: String) async throws -> CHAPCredentials {
        let known: ClusterSecrets?
        if let secrets { known = secrets } else { known = try await node.catalog.secrets(cluster.name) }
        guard let password = known?.disks[vm] else { throw DaemonError.failed(Self.noSecret(cluster.name)) }
        return CHAPCredentials(user: Naming.chapUser(vm: vm), password: password)
    }

    static func noSecret(_ cluster: String) -> String {
        "cluster '\(cluster)' was made before every disk had its own CHAP secret, so its disks are not exported; destroy it ('vc cluster destroy \(cluster)') and create it again"
    }

    // MARK: - domains

    func document(_ m: VirtualMachine) -> DomainDocument {
        DomainDocument(
            vm: m, cluster: cluster.name, vcpus: cluster.spec.vcpus, memoryMiB: cluster.spec.memoryMiB,
            bridge: cluster.network.bridge, portal: node.portal, initiator: Naming.initiatorIQN(node: m.node),
            accelerator: node.accelerator.kind, consolePath: node.consolePath(cluster: cluster.name, vm: m.name),
            chap: CHAPReference(user: Naming.chapUser(vm: m.name), secretUsage: Naming.chapSecretUsage(vm: m.name)),
            sshKeys: cluster.spec.sshKeys)
    }

    /// Starts a VM paused: restores its memory image when it has one (resume), boots it
    /// otherwise. `.release` lets it run.
    private func start(_ m: VirtualMachine) async throws {
        let savePath = node.pool.path(m.saveFile)
        let hasImage = node.pool.exists(m.saveFile)
        // A resume must restore memory; booting afresh would silently lose the guests' state.
        let mustRestore = cluster.state == .resuming
        try await node.hypervisor.run(timeout: Self.memoryImageTimeout) { conn in
            guard let d = try conn.domain(named: m.name) else {
                throw DaemonError.failed("domain \(m.name) is not defined")
            }
            if d.isActive { return }
            if hasImage {
                try conn.restore(from: savePath, paused: true)
            } else if mustRestore {
                throw DaemonError.failed(
                    "the memory image of \(m.name) is missing (\(m.saveFile)); it cannot resume. Destroy the cluster, or suspend it again first"
                )
            } else {
                try d.start(paused: true)
            }
        }
        if hasImage {
            let save = m.saveFile
            try await node.pool.offload { pool throws(StorageError) in try pool.remove(save) }
        }
    }

    /// Saves a running VM's memory into the pool. The image is written under a temporary
    /// name and renamed when complete, so a crash never leaves a truncated image that a
    /// resume would trust. If a save completed but vcd died before the rename (libvirtd
    /// finishes a save job without its client), the complete image is kept, not redone.
    private func save(_ m: VirtualMachine) async throws {
        let final = node.pool.path(m.saveFile)
        let partial = final + ".partial"
        try HostFiles.makeDirectories(HostFiles.parent(final))
        let keep = try await node.hypervisor.run(timeout: Self.memoryImageTimeout) { conn -> Bool in
            guard let d = try conn.domain(named: m.name) else {
                throw DaemonError.failed("domain \(m.name) is not defined")
            }
            if d.isActive {
                unlink(partial)
                try d.save(to: partial)
                return true
            }
            return access(partial, F_OK) == 0 && conn.isSaveImage(partial)
        }
        if keep {
            guard rename(partial, final) == 0 else {
                throw DaemonError.failed("could not keep \(m.name)'s memory image: \(String(cString: strerror(errno)))")
            }
        }
    }

    /// A save or restore moves the guest's whole memory: it may take far longer than an
    /// ordinary libvirt call. A libvirtd that hangs meanwhile is still caught by the
    /// connection's keepalive.
    static let memoryImageTimeout = Duration.seconds(30 * 60)

    private func undefine(_ name: String) async throws {
        try await node.hypervisor.run { conn in
            guard let d = try conn.domain(named: name) else { return }
            // Never remove a domain Peerless did not make for this cluster.
            guard Self.isOurs(d, cluster: cluster.name) else { return }
            if d.isActive { try d.destroy() }
            try d.undefine()
        }
    }

    static func isOurs(_ domain: Domain, cluster: String) -> Bool {
        guard let meta = domain.metadata(namespace: DomainDocument.metadataNamespace) else { return false }
        return meta.contains("cluster=\"\(cluster)\"") || meta.contains("cluster='\(cluster)'")
    }

    private func makeConsoleDirectory() throws {
        try HostFiles.makeDirectories("\(node.consoleDirectory)/\(cluster.name)")
    }
}
