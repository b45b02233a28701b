import Foundation
import ISCSI
import Libvirt
import Logging
import Synchronization
import VCHost
import VCModel
import VCNetwork
import VCStorage

/// Carries out one step of a plan, or undoes it, on the node where it belongs: the disk
/// steps on the storage node, a VM's steps on the node it is placed on, the network steps
/// on every node that hosts one of the cluster's VMs. This node runs its own share and
/// sends the rest to the other nodes' vcd, which run it with `performHere`. Every step can be run
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
    /// Where each VM of a migration ran before (`ClusterOperation.origins`): its `migrate`
    /// step runs there, and that node hosts the network until the migration is over.
    var origins: [String: ClusterOperation.Origin] = [:]
    /// Nodes without a lease that did not answer an undo's probe: the rest of the plan's
    /// undo leaves them to their reconciler at once instead of waiting for each step.
    private let silent = SilentNodes()

    private var logger: Logger {
        var l = node.logger
        l[metadataKey: "cluster"] = "\(cluster.name)"
        return l
    }

    private func vm(_ name: String) -> VirtualMachine {
        cluster.vms.first { $0.name == name }!
    }

    /// This node's address on the cluster network.
    private var serviceAddress: String { cluster.network.serviceAddress(of: node.name) }

    private var bridge: ClusterBridge {
        ClusterBridge(network: cluster.network, address: serviceAddress, logger: logger)
    }

    var firewall: ClusterFirewall {
        ClusterFirewall(
            boundary: GuestBoundary(network: cluster.network, vms: cluster.vms, serviceAddress: serviceAddress),
            runDirectory: node.networkDirectory, logger: logger)
    }

    private var dhcp: DHCPServer {
        DHCPServer(
            table: DHCPTable(
                network: cluster.network, vms: cluster.vms, runDirectory: node.networkDirectory,
                serviceAddress: serviceAddress,
                mtu: node.configuration.network.underlay == nil ? nil : ClusterOverlay.mtu),
            logger: logger)
    }

    /// The nodes that host at least one of the cluster's VMs, or ran one that migrates.
    var hostingNodes: [String] { Set(cluster.vms.map(\.node) + origins.values.map(\.node)).sorted() }

    // MARK: - where a step runs

    /// Carries out `step` where it belongs; returns what it has to say beside "done"
    /// (how a migration went).
    @discardableResult
    func perform(_ step: Step) async throws -> String? { try await route(step, undo: false) }

    func undo(_ step: Step) async throws { _ = try await route(step, undo: true) }

    private func route(_ step: Step, undo: Bool) async throws -> String? {
        try node.operations.checkStopping()
        switch step.site {
        case .storage:
            let storage = try await node.storageNode()
            return try await run(step, undo: undo, on: storage.name, record: storage)
        case .vmHost:
            return try await run(step, undo: undo, on: vm(step.vm!).node)
        case .origin:
            guard let origin = origins[step.vm!] else {
                throw DaemonError.failed("\(step) has no origin: \(step.vm!) is not migrating")
            }
            return try await run(step, undo: undo, on: origin.node)
        case .everyHost:
            try await withThrowingTaskGroup(of: Void.self) { group in
                for host in hostingNodes {
                    group.addTask { _ = try await run(step, undo: undo, on: host) }
                }
                try await group.waitForAll()
            }
            return nil
        }
    }

    /// Takes the cluster's network off `hosts`, nodes that host none of its VMs any more,
    /// in the reverse order of the plan's shared steps (its boundary last); a node that is
    /// down removes it itself when it comes back.
    func removeNetwork(from hosts: [String]) async throws {
        for step in ClusterPlan.networkSteps.reversed() {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for host in hosts { group.addTask { _ = try await run(step, undo: true, on: host) } }
                try await group.waitForAll()
            }
        }
    }

    private func run(_ step: Step, undo: Bool, on name: String, record: NodeRecord? = nil) async throws -> String? {
        if name == node.name {
            if undo {
                try await undoHere(step)
                return nil
            }
            return try await performHere(step)
        }
        var target = record
        if target == nil { target = try await node.liveNode(name) }
        guard let target else {
            if undo, !silent.contains(name), let member = try await node.member(name),
                await node.peers.answers(member)
            {
                // Without a lease (lapsed, or not renewed yet after a partition) but up:
                // it removes its share now rather than at its next reconcile pass.
                _ = try await node.peers.perform(
                    step, undo: true, cluster: cluster, image: image, origins: origins, on: member)
                return nil
            }
            if undo {
                leftToItself(name, step)
                return nil
            }
            throw DaemonError.unavailable("node \(name) is not up (it holds no lease); \(step) cannot run there")
        }
        do {
            return try await whileLive(target) {
                try await node.peers.perform(
                    step, undo: undo, cluster: cluster, image: image, origins: origins, on: target)
            }
        } catch is LostMidway {
            if undo {
                leftToItself(name, step)
                return nil
            }
            throw DaemonError.unavailable("node \(name) was lost (its lease expired) before \(step) was done there")
        }
    }

    /// An undo on a node that is down: its domains, bridges and rules are placed nowhere
    /// now, and the node removes them itself when it comes back (see the reconciler),
    /// before it starts anything.
    private func leftToItself(_ name: String, _ step: Step) {
        silent.insert(name)
        logger.warning(
            "node is down; it removes its share when it comes back", metadata: ["node": "\(name)", "step": "\(step)"])
    }

    /// The node a step was sent to lost its lease before it answered.
    private struct LostMidway: Error {}

    /// What `call` to `target` gives, given up once the catalog no longer lists `target` as
    /// live (its lease expired): a request to a node cut off waits on a connection that no
    /// longer carries anything, up to the step timeout, and the operation (a recovery of
    /// another lost node, say) would wait with it. A catalog that cannot be read says
    /// nothing.
    private func whileLive(_ target: NodeRecord, _ call: @escaping @Sendable () async throws -> String?)
        async throws -> String?
    {
        try await withThrowingTaskGroup(of: String?.self) { group in
            group.addTask { try await call() }
            group.addTask {
                while true {
                    try await Task.sleep(for: Self.livenessInterval)
                    var lost = false
                    do {
                        lost = try await node.liveNode(target.name) == nil
                    } catch {
                        // Unread: it says nothing about the node.
                    }
                    if lost { throw LostMidway() }
                }
            }
            defer { group.cancelAll() }
            return try await group.next() ?? nil
        }
    }

    /// How often a node carrying out a step is checked for life.
    static let livenessInterval = Duration.seconds(1)

    // MARK: - this node's share

    @discardableResult
    func performHere(_ step: Step) async throws -> String? {
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
            await GatewayAddresses(node: node).settle(cluster)
        case .overlay:
            // A node that hosts the network alone needs no tunnel (and keeps none).
            if let overlay = try await overlay() {
                try await overlay.peers.isEmpty ? overlay.remove() : overlay.ensure()
            }
        case .dhcp:
            try await dhcp.ensure()
        case .snapshot(let name):
            guard let image else { throw DaemonError.failed("no golden image given for \(name)'s snapshot") }
            let (source, disk) = (image.file, vm(name).diskFile)
            try await node.disks.makeDisk(disk, from: source)
        case .export(let name):
            // Only this incarnation's name: an earlier one is never admitted again, and a
            // fenced one (its node was lost) not even as the current one.
            let m = vm(name)
            if NodeLoss.names(try await node.catalog.fenced()).contains(m.initiator) {
                throw DaemonError.failed(
                    "the incarnation \(m.initiator) of \(name) was fenced when its node was lost and is never admitted again; it starts under a new one when the cluster is recovered or resumed"
                )
            }
            try await node.disks.open(m, chap: try await credentials(name))
        case .verify(let name):
            let m = vm(name)
            let storage = try await node.storageNode()
            let size = try await diskBytes(m)
            let chap = try await credentials(name)
            let target = ISCSITarget(portal: storage.portal ?? node.configuration.iscsi.portal, iqn: m.diskIQN, lun: 1)
            do {
                _ = try await node.iscsi.verifyDisk(target, expectedBytes: size, chap: chap, initiator: m.initiator)
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
            let xml = document(vm(name), portal: try await storagePortal()).xml
            try makeConsoleDirectory()
            let derived = Naming.domainUUID(
                cluster: cluster.name, vm: name, createdAt: Int64(cluster.createdAt.timeIntervalSince1970))
            _ = try await node.hypervisor.run { conn in
                // One UUID on every node (a memory image restores only onto its own), and a
                // redefinition keeps the one it has: libvirt refuses a name with another.
                let existing = try conn.domain(named: name).flatMap {
                    Self.isOurs($0, cluster: cluster.name) ? $0 : nil
                }
                return try conn.define(xml: Self.withUUID(xml, existing?.uuid ?? derived))
            }
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
        case .admit(let name):
            let m = vm(name)
            guard let origin = origins[name] else {
                throw DaemonError.failed("\(step) has no origin: \(name) is not migrating")
            }
            try await node.disks.open(
                m, to: [origin.initiator(vm: name), m.initiator], chap: try await credentials(name))
        case .migrate(let name):
            return try await migrate(vm(name))
        }
        return nil
    }

    func undoHere(_ step: Step) async throws {
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
            try await ClusterOverlay(network: cluster.network, local: "", peers: [], logger: logger).remove()
        case .dhcp:
            await dhcp.remove()
        case .snapshot(let name):
            try await node.disks.removeDisk(vm(name).diskFile, directory: "disks/\(cluster.name)")
        case .export(let name):
            try await node.disks.close(iqn: vm(name).diskIQN, account: Naming.chapUser(vm: name))
        case .secret(let name):
            try await node.hypervisor.run { try $0.removeISCSISecret(usage: Naming.chapSecretUsage(vm: name)) }
        case .verify, .release, .migrate:
            break
        case .admit(let name):
            // Back to the running incarnation alone; the new name is never admitted again
            // (the VM's next placement goes above it).
            guard let origin = origins[name] else { return }
            let m = vm(name)
            try await node.disks.open(m, to: [origin.initiator(vm: name)], chap: try await credentials(name))
        case .define(let name):
            try await undefine(name)
            unlink(node.consolePath(cluster: cluster.name, vm: name))
            rmdir("\(node.consoleDirectory)/\(cluster.name)")
        case .start(let name), .save(let name):
            try await node.hypervisor.run { conn in
                guard let d = try conn.domain(named: name), Self.isOurs(d, cluster: cluster.name) else { return }
                if d.isActive { try d.destroy() }
            }
            try await MemoryImages(runner: self).discard(vm(name))
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

    func document(_ m: VirtualMachine, portal: ISCSIPortal) -> DomainDocument {
        DomainDocument(
            vm: m, cluster: cluster.name, vcpus: cluster.spec.vcpus, memoryMiB: cluster.spec.memoryMiB,
            bridge: cluster.network.bridge, portal: portal, initiator: m.initiator,
            accelerator: node.accelerator.kind, consolePath: node.consolePath(cluster: cluster.name, vm: m.name),
            chap: CHAPReference(user: Naming.chapUser(vm: m.name), secretUsage: Naming.chapSecretUsage(vm: m.name)),
            sshKeys: cluster.spec.sshKeys, peers: cluster.vms.map(\.name).filter { $0 != m.name },
            extraOEM: node.configuration.testing.guestOEM ?? [])
    }

    /// Starts a VM paused: restores its memory image when it has one (resume), boots it
    /// otherwise. `.release` lets it run. The image is on the storage node; a compute node
    /// fetches it first, and restores it with its own portal and this incarnation's name.
    private func start(_ m: VirtualMachine) async throws {
        let images = MemoryImages(runner: self)
        let active = try await node.hypervisor.run { try $0.domain(named: m.name)?.isActive ?? false }
        if active { return }
        let savePath = try await images.fetch(m)
        // A resume must restore memory; booting afresh would silently lose the guests' state.
        let mustRestore = cluster.state == .resuming
        let portal = try await storagePortal()
        try await node.hypervisor.run(timeout: Self.memoryImageTimeout) { conn in
            guard let d = try conn.domain(named: m.name) else {
                throw DaemonError.failed("domain \(m.name) is not defined")
            }
            if d.isActive { return }
            if let savePath {
                let xml = SavedDefinition.retarget(
                    try conn.saveImageXML(savePath), portal: portal, initiator: m.initiator)
                try conn.restore(from: savePath, xml: xml, paused: true)
            } else if mustRestore {
                throw DaemonError.failed(
                    "the memory image of \(m.name) is missing (\(m.saveFile)); it cannot resume. Destroy the cluster, or suspend it again first"
                )
            } else {
                try d.start(paused: true)
            }
        }
        if savePath != nil { try await images.discard(m) }
    }

    /// Saves a running VM's memory. The image is written under a temporary name and
    /// renamed when complete, so a crash never leaves a truncated image that a resume
    /// would trust. If a save completed but vcd died before the rename (libvirtd finishes
    /// a save job without its client), the complete image is kept, not redone. A compute
    /// node then sends it to the storage node: nothing of a suspended VM stays on it.
    private func save(_ m: VirtualMachine) async throws {
        let images = MemoryImages(runner: self)
        let final = images.localPath(m)
        let partial = final + ".partial"
        try HostFiles.makeDirectories(HostFiles.parent(final))
        let keep = try await node.hypervisor.run(timeout: Self.memoryImageTimeout) { conn -> Bool in
            guard let d = try conn.domain(named: m.name) else {
                // Already saved and sent by an earlier try of this step.
                return false
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
        try await images.store(m)
    }

    /// Moves a running VM from this node (its origin) to the node it is placed on now,
    /// while the guest runs: libvirt's peer-to-peer live migration over the underlay, the
    /// destination defined with this incarnation's initiator name (admitted beside the
    /// origin's by `.admit`). When it fails, the guest still runs here (libvirt aborts the
    /// migration), and it is saved to the storage node instead, so that `.start` on the
    /// destination restores it: a drain never leaves a VM on a node it must leave.
    /// Returns how it went, for the drain's progress line.
    private func migrate(_ m: VirtualMachine) async throws -> String {
        let running = try await node.hypervisor.run { conn -> Bool in
            guard let d = try conn.domain(named: m.name), Self.isOurs(d, cluster: cluster.name) else { return false }
            return d.isActive
        }
        // Moved (or saved) by an earlier try of this step.
        guard running else { return "not running here any more" }
        guard let destination = try await node.liveNode(m.node), let address = destination.underlay else {
            throw DaemonError.unavailable("node \(m.node) is not up (it holds no lease); \(m.name) cannot move there")
        }
        let portal = try await storagePortal()
        let started = ContinuousClock.now
        let uri = "qemu+tcp://\(address)/system"
        let listen = node.configuration.testing.breakLiveMigration == true ? "127.0.0.1" : address
        do {
            try await node.hypervisor.run(timeout: Self.memoryImageTimeout) { conn in
                guard let d = try conn.domain(named: m.name) else {
                    throw DaemonError.failed("domain \(m.name) is not defined")
                }
                let xml = SavedDefinition.retarget(try d.migratableXML(), portal: portal, initiator: m.initiator)
                try d.migrateLive(to: uri, migrationURI: "tcp://\(address)", listenAddress: listen, xml: xml)
            }
        } catch {
            // libvirt's own words: a failed connection here is between the two libvirtds
            // (or QEMUs), not this node's libvirtd being down, as `DaemonError.from` reads it.
            let reason = (error as? LibvirtError).map { "libvirt: \($0.description)" } ?? "\(DaemonError.from(error))"
            logger.warning(
                "live migration failed; saving the VM to the storage node instead",
                metadata: ["vm": "\(m.name)", "to": "\(m.node)", "error": "\(reason)"])
            try await save(m)
            return
                "live migration failed (\(reason)); suspended it to the storage node instead, it resumes on \(m.node)"
        }
        let seconds = Double((ContinuousClock.now - started) / .milliseconds(1)) / 1000
        // The destination keeps the job's figures; the downtime is the guest's pause.
        let downtime = try? await node.hypervisor.run { _ -> UInt64? in
            try LibvirtConnection(uri: uri).domain(named: m.name)?.completedJob()?.downtimeMilliseconds
        }
        let paused = (downtime ?? nil).map { ", paused \($0) ms" } ?? ""
        return "live to \(m.node) in \(String(format: "%.1f", seconds)) s\(paused)"
    }

    /// The size the disk's LUN must report: the pool's file here, else the golden image it
    /// was cloned from.
    private func diskBytes(_ m: VirtualMachine) async throws -> UInt64 {
        if node.has(.storage) { return try node.disks.diskBytes(m.diskFile) }
        if let image { return image.sizeBytes }
        guard let found = try await node.catalog.image(cluster.spec.image)?.value else {
            throw DaemonError.failed("image '\(cluster.spec.image)' of \(m.name)'s disk is not in the catalog")
        }
        return found.sizeBytes
    }

    /// Where QEMU and libiscsi reach the disks: the storage node's portal.
    func storagePortal() async throws -> ISCSIPortal {
        let storage = try await node.storageNode()
        return PeerNode.portal(storage.portal ?? node.configuration.iscsi.portal)
    }

    /// This node's end of the cluster's VXLAN, with the other hosting nodes as peers; nil on
    /// a single node (no underlay configured).
    private func overlay() async throws -> ClusterOverlay? {
        guard let local = node.configuration.network.underlay else { return nil }
        var peers = Set<String>()
        for host in hostingNodes where host != node.name {
            guard let record = try await node.liveNode(host), let address = record.underlay else {
                logger.warning(
                    "a hosting node is not up; its tunnel is added when it is", metadata: ["node": "\(host)"])
                continue
            }
            peers.insert(address)
        }
        return ClusterOverlay(network: cluster.network, local: local, peers: peers, logger: logger)
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

    static func withUUID(_ xml: String, _ uuid: String) -> String {
        guard let end = xml.range(of: "</name>") else { return xml }
        return xml.replacingCharacters(in: end, with: "</name>\n  <uuid>\(uuid)</uuid>")
    }

    static func isOurs(_ domain: Domain, cluster: String) -> Bool {
        guard let meta = domain.metadata(namespace: DomainDocument.metadataNamespace) else { return false }
        return meta.contains("cluster=\"\(cluster)\"") || meta.contains("cluster='\(cluster)'")
    }

    private func makeConsoleDirectory() throws {
        try HostFiles.makeDirectories("\(node.consoleDirectory)/\(cluster.name)")
    }
}

/// The names one plan's undo found silent; shared by the copies of its runner.
final class SilentNodes: Sendable {
    private let names = Mutex<Set<String>>([])

    func contains(_ name: String) -> Bool { names.withLock { $0.contains(name) } }
    func insert(_ name: String) { _ = names.withLock { $0.insert(name) } }
}
