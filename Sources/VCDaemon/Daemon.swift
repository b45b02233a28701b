import Foundation
import Hummingbird
import ISCSI
import Libvirt
import Logging
import NIOCore
import ServiceLifecycle
import Systemd
import VCCatalog
import VCHost
import VCModel
import VCStorage

/// Assembles a node's vcd: checks the daemons it needs, prepares the pool, decides the
/// accelerator, and runs the catalog's watches, the API listeners, the node lease, the
/// reconciler, the sweep of interrupted imports and the watchdog as one service group
/// that stops gracefully on SIGTERM.
public enum Daemon {
    public static func run(configuration: DaemonConfiguration, logger: Logger) async throws {
        let lock = try InstanceLock(directory: configuration.stateDirectory)
        defer { lock.release() }
        let token = try APIToken.loadOrCreate(at: configuration.tokenPath)
        let node = try await prepare(configuration: configuration, token: token.value, logger: logger)
        let lifecycle = ClusterLifecycle(node: node)
        let images = ImageLibrary(node: node)
        let routes = APIRoutes(node: node, lifecycle: lifecycle, images: images)
        let readiness = Readiness(
            status: "serving on \(configuration.api.host):\(configuration.api.port), \(node.accelerator.kind.rawValue)")

        let tcp = Application(
            router: routes.router(token: token),
            configuration: .init(
                address: .hostname(configuration.api.host, port: configuration.api.port), serverName: "vcd"),
            onServerRunning: { _ in await readiness.listenerBound() }, logger: logger)
        let socketPath = configuration.api.socket
        let socketDirectory = HostFiles.parent(socketPath)
        if access(socketDirectory, F_OK) != 0 {
            // Made by vcd (/run/peerless): only root and its group get through, so the
            // socket is closed to others even before its own mode is set.
            try HostFiles.makeDirectories(socketDirectory)
            chmod(socketDirectory, 0o750)
        }
        unlink(socketPath)
        let local = Application(
            router: routes.router(),
            configuration: .init(address: .unixDomainSocket(path: socketPath), serverName: "vcd"),
            // Not left to the umask: root and the socket's group may connect, nobody else.
            onServerRunning: { _ in
                if chmod(socketPath, 0o660) != 0 {
                    logger.error(
                        "cannot set the socket's mode",
                        metadata: ["socket": "\(socketPath)", "error": "\(HostFiles.lastError())"])
                }
            }, logger: logger)

        let group = ServiceGroup(
            configuration: .init(
                services: [
                    // Before the listeners, so stopped after them.
                    .init(service: CatalogWatch(catalog: node.catalog, logger: logger)),
                    .init(service: tcp), .init(service: local),
                    .init(service: NodeLease(node: node, record: node.record, readiness: readiness)),
                    .init(service: Reconciler(node: node, lifecycle: lifecycle, images: images)),
                    .init(
                        service: ImportSweep(
                            images: images, intervalSeconds: configuration.reconcileIntervalSeconds)),
                    .init(service: WatchdogService(readiness: readiness)),
                    // Last, so stopped first: see OperationDrain.
                    .init(service: OperationDrain(operations: node.operations)),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        logger.info(
            "vcd starting",
            metadata: [
                "node": "\(node.name)", "api": "\(configuration.api.host):\(configuration.api.port)",
                "accelerator": "\(node.accelerator.kind.rawValue)", "pool": "\(node.pool.root)",
            ])
        do {
            try await group.run()
        } catch let error as IOError where error.errnoCode == EADDRINUSE {
            throw DaemonError.unavailable(
                "cannot listen on \(configuration.api.host):\(configuration.api.port): address in use; is another vcd running?"
            )
        }
        try? await node.hypervisor.shutdown()
        try? await node.iscsi.shutdown()
    }

    /// Everything that must hold before vcd serves: a valid node name, etcd, libvirtd and
    /// tgtd answering, the pool mounted. Each failure is one line saying what to start.
    static func prepare(configuration: DaemonConfiguration, token: String, logger: Logger) async throws -> PeerNode {
        do {
            try NameRule.checkNode(configuration.node)
            guard !configuration.roles.isEmpty, !configuration.has(.etcd) else {
                throw DaemonError.invalid(
                    "roles must name compute, storage or both (etcd membership is not a configured role)")
            }
            let addresses = try AddressPlan(
                prefix: configuration.network.prefix, bridgePrefix: configuration.network.bridgePrefix)
            // The member `vcnode join` gave this node, when it does not run (after a reboot).
            do {
                try await EtcdMemberProcess(configuration: configuration, logger: logger).ensure()
            } catch {
                logger.error("this node's etcd member does not start", metadata: ["error": "\(error)"])
            }
            let catalog = Catalog(
                etcd: EtcdClient(endpoints: configuration.etcd.allEndpoints), prefix: configuration.etcd.prefix)
            _ = try await catalog.nodes()

            // A storage-only node runs no VMs and needs no libvirtd; a compute-only node
            // has no pool and no tgtd: its disks are on the storage node.
            let hypervisor = Hypervisor(
                uri: configuration.libvirtURI, callTimeout: .seconds(configuration.libvirtCallTimeoutSeconds))
            var cpus = 0
            var memoryMiB = 0
            if configuration.has(.compute) {
                let info = try await hypervisor.run { try $0.nodeInfo() }
                cpus = info.cpus
                memoryMiB = Int(info.memoryKiB / 1024)
            }
            let exporter = TargetExporter(controlPort: configuration.iscsi.tgtControlPort, logger: logger)
            let pool = StoragePool(configuration: configuration.pool, logger: logger)
            if configuration.has(.storage) {
                _ = try await exporter.targets()
                if let problem = portalProblem(try await exporter.portals(), configured: configuration.iscsi.portal) {
                    throw DaemonError.unavailable(problem)
                }
                let poolStatus = try await pool.prepare()
                logger.info(
                    "pool ready",
                    metadata: [
                        "path": "\(poolStatus.path)", "filesystem": "\(poolStatus.filesystem)",
                        "backing": "\(poolStatus.backing)",
                    ])
            }

            try HostFiles.makeDirectories(configuration.stateDirectory)
            if let problem = KVMDevice.problem() { logger.warning("\(problem)") }
            let accelerator =
                configuration.has(.compute)
                ? await AcceleratorProbe(
                    configuration: configuration.accelerator,
                    cacheFile: "\(configuration.stateDirectory)/accelerator.json",
                    logger: logger
                ).decide() : Accelerator(kind: .tcg, reason: "runs no VMs (storage node)")
            logger.info(
                "accelerator", metadata: ["kind": "\(accelerator.kind.rawValue)", "reason": "\(accelerator.reason)"])

            let capacity = NodeCapacity(
                node: configuration.node, cpus: min(cpus, configuration.capacity.cpus ?? cpus),
                memoryMiB: min(memoryMiB, configuration.capacity.memoryMiB ?? memoryMiB))
            let node = PeerNode(
                configuration: configuration, logger: logger, catalog: catalog, hypervisor: hypervisor,
                iscsi: ISCSIClient(initiator: Naming.initiatorIQN(node: configuration.node)), exporter: exporter,
                pool: pool, addresses: addresses, accelerator: accelerator, capacity: capacity, token: token,
                machine: try machineID(in: configuration.stateDirectory))
            return node
        } catch {
            throw DaemonError.from(error)
        }
    }
}

/// What is wrong with where tgtd listens, or nil: it must listen on the storage address
/// only, never on every address of the host (guests and the LAN could reach its login).
func portalProblem(_ portals: [String], configured: String) -> String? {
    let others = portals.filter { $0 != configured }
    guard !others.isEmpty else { return nil }
    return
        "tgtd listens on \(others.joined(separator: ", ")), not only on the storage address \(configured); restart it with --iscsi portal=\(configured) (scripts/daemons.sh does)"
}

/// One vcd per state directory: an exclusive flock held for the life of the process, so a
/// second vcd refuses to start instead of taking over the first one's socket.
struct InstanceLock {
    private let fd: Int32

    init(directory: String) throws {
        try HostFiles.makeDirectories(directory)
        let path = "\(directory)/vcd.lock"
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw DaemonError.failed("cannot open \(path): \(String(cString: strerror(errno)))") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let holder = (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(
                in: .whitespacesAndNewlines)
            close(fd)
            throw DaemonError.conflict(
                "another vcd (pid \(holder ?? "?")) already runs with state directory \(directory); stop it first")
        }
        ftruncate(fd, 0)
        let pid = Array("\(getpid())\n".utf8)
        _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
    }

    func release() { close(fd) }
}

/// This machine's id, made once (a random UUID in `STATE/machine-id`): what tells a vcd
/// restarted here from another machine given the same node name. A machine whose state
/// directory was wiped is a new machine.
func machineID(in directory: String) throws -> String {
    let path = "\(directory)/machine-id"
    if let text = try? HostFiles.read(path), !text.trimmed.isEmpty { return text.trimmed }
    let id = UUID().uuidString.lowercased()
    do {
        try HostFiles.write(path, id + "\n")
    } catch {
        throw DaemonError.failed("cannot write \(path): \(error)")
    }
    return id
}
