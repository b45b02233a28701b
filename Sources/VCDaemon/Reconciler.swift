import Logging
import ServiceLifecycle
import VCCatalog
import VCModel
import VCNetwork
import VCStorage

/// Makes this node's share of the world match the catalog. Each pass first finishes or
/// undoes the operations of this node that nothing here runs any more (the journal of a
/// previous vcd, or an operation whose last catalog write failed), then re-makes what a
/// restart of the host, tgtd or dnsmasq loses: bridges, DHCP servers, exports, and the
/// VMs of running clusters. A pass runs at start and every `reconcileIntervalSeconds`.
public struct Reconciler: Service, CustomStringConvertible {
    public var description: String { "Reconciler" }
    let node: PeerNode
    let lifecycle: ClusterLifecycle
    let images: ImageLibrary
    public func run() async throws {
        await images.recover()
        let seconds = node.configuration.reconcileIntervalSeconds
        await pass()
        guard seconds > 0 else {
            try? await gracefulShutdown()
            return
        }
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(seconds)) }
            await pass()
        }
    }

    func pass() async {
        await recoverOperations()
        await reconcile()
    }

    /// Finishes or undoes every operation of this node that no task here is running: one
    /// left by a previous vcd, or one whose last catalog write failed. A live operation
    /// holds its cluster's lock from before its journal entry is written until after it is
    /// removed, so an entry whose cluster is free here is an orphan.
    func recoverOperations() async {
        var operations: [ClusterOperation] = []
        do {
            let live = try await node.catalog.nodes().map(\.name)
            for operation in try await node.catalog.operations() {
                if operation.node == node.name {
                    operations.append(operation)
                } else if !live.contains(operation.node) {
                    // Its owner holds no lease any more: one live node (the winner of this
                    // transaction) finishes or undoes it, so no cluster stays busy forever.
                    if let moved = try await node.catalog.takeOver(operation, by: node.name) {
                        node.logger.notice(
                            "took over the operation of a node that is down",
                            metadata: [
                                "cluster": "\(operation.cluster)", "node": "\(operation.node)",
                                "operation": "\(operation.kind.rawValue)",
                            ])
                        operations.append(moved)
                    }
                }
            }
        } catch {
            if !Task.isCancelled {
                node.logger.error("cannot read the operation journal", metadata: ["error": "\(error)"])
            }
            return
        }
        for operation in operations {
            guard await node.locks.tryLock(operation.cluster, as: .operation) else { continue }
            await recover(operation)
            await node.locks.unlock(operation.cluster)
        }
    }

    private func recover(_ operation: ClusterOperation) async {
        var logger = node.logger
        logger[metadataKey: "cluster"] = "\(operation.cluster)"
        let found: VirtualCluster?
        do {
            // Read the entry again under the lock: it may have been closed meanwhile.
            guard try await node.catalog.operation(operation.cluster) == operation else { return }
            found = try await node.catalog.cluster(operation.cluster)?.value
        } catch {
            // Not "missing": etcd may be electing. Try again on the next pass.
            logger.warning("cannot read an interrupted operation yet", metadata: ["error": "\(error)"])
            return
        }
        guard let cluster = found else {
            logger.warning("dropping a journal entry without its cluster")
            try? await node.catalog.dropOperation(operation)
            return
        }
        logger.notice(
            "recovering an interrupted operation",
            metadata: ["operation": "\(operation.kind.rawValue)", "recovery": "\(operation.recovery)"])
        let (_, events) = AsyncStream<OperationEvent>.makeStream()
        defer { events.finish() }
        switch operation.kind {
        case .create:
            await lifecycle.rollBack(
                cluster, operation: operation, reason: .failed("vcd stopped during the create"), events: events)
        case .destroy:
            await lifecycle.runDestroy(cluster, operation: operation, events: events)
        case .suspend:
            await lifecycle.runTransition(
                cluster, operation: operation, plan: .suspend(cluster), to: .suspended, events: events)
        case .resume:
            await lifecycle.runTransition(
                cluster, operation: operation, plan: .resume(cluster), to: .running, events: events)
        }
    }

    /// One pass over the running clusters with VMs here. Each is worked on under its lock
    /// and re-read under it, so that a pass never overlaps an operation on the cluster.
    func reconcile() async {
        let names: [String]
        do {
            names = try await node.catalog.clusters().map(\.value)
                .filter { Self.settled.contains($0.state) && $0.vms.contains { $0.node == node.name } }.map(\.name)
        } catch {
            if !Task.isCancelled {
                node.logger.warning("reconcile skipped", metadata: ["error": "\(DaemonError.from(error))"])
            }
            return
        }
        // One listing of nftables' tables serves the whole pass.
        let tables: Set<String>?
        do {
            tables = try await ClusterFirewall.loadedTables()
        } catch {
            node.logger.warning("cannot list nftables tables", metadata: ["error": "\(error)"])
            tables = nil
        }
        for name in names {
            guard await node.locks.tryLock(name, as: .repair) else { continue }
            do {
                if try await node.catalog.operation(name) == nil,
                    let cluster = try await node.catalog.cluster(name),
                    Self.settled.contains(cluster.value.state)
                {
                    // Whatever its state, a network whose guests may still be up (a
                    // failed teardown, a suspended cluster's bridge) keeps its boundary.
                    try await ensureBoundary(cluster.value, tables: tables)
                    if let secrets = try await node.catalog.secrets(name) {
                        if cluster.value.state == .running {
                            try await reconcile(cluster.value, secrets: secrets, tables: tables)
                        }
                    } else {
                        try await close(cluster)
                    }
                }
            } catch {
                node.logger.warning(
                    "reconcile failed", metadata: ["cluster": "\(name)", "error": "\(DaemonError.from(error))"])
            }
            await node.locks.unlock(name)
        }
    }

    /// Re-makes what a running cluster's VMs on this node need, and starts those that stopped.
    private func reconcile(_ cluster: VirtualCluster, secrets: ClusterSecrets, tables: Set<String>?) async throws {
        let runner = StepRunner(node: node, cluster: cluster, image: nil, secrets: secrets)
        try await runner.perform(.bridge)
        try await runner.perform(.dhcp)
        // One listing of tgtd's targets for the whole cluster; only missing or altered
        // exports are made again.
        let targets = try await node.exporter.targets()
        for vm in cluster.vms where vm.node == node.name {
            let exported = targets.first { $0.iqn == vm.diskIQN }
            // Also a target tgtd lost its CHAP account for: re-made with the account bound
            // before any initiator, so nobody logs in without the secret meanwhile.
            let account = Naming.chapUser(vm: vm.name)
            if !TargetExporter.serves(
                exported, file: node.pool.path(vm.diskFile), to: [node.initiator], account: account)
            {
                node.logger.notice("exporting a disk tgtd lost or altered", metadata: ["vm": "\(vm.name)"])
                try await runner.perform(.export(vm: vm.name))
            }
            let active = try await node.hypervisor.run { try $0.domain(named: vm.name)?.isActive ?? false }
            if !active {
                node.logger.notice("starting a VM that should run", metadata: ["vm": "\(vm.name)"])
                try await runner.perform(.verify(vm: vm.name))
                if try await node.hypervisor.run({ try $0.domain(named: vm.name) == nil }) {
                    try await runner.perform(.define(vm: vm.name))
                }
                try await runner.perform(.start(vm: vm.name))
            }
            // Also frees one a crash left paused between start and release.
            try await runner.perform(.release(vm: vm.name))
        }
    }

    /// States in which no operation works on a cluster and its network may be up.
    static let settled: Set<ClusterState> = [.running, .suspended, .failed]

    /// Loads the cluster network's tenant boundary when nftables lost it (a `flush ruleset`
    /// by another firewall tool) or it is not the one this vcd would make (new services).
    /// Unknown (nft failed to list) counts as missing.
    private func ensureBoundary(_ cluster: VirtualCluster, tables: Set<String>?) async throws {
        let runner = StepRunner(node: node, cluster: cluster, image: nil)
        guard let tables, runner.firewall.isCurrent(tables: tables) else {
            node.logger.notice("loading a tenant boundary", metadata: ["cluster": "\(cluster.name)"])
            try await runner.perform(.firewall)
            return
        }
    }

    /// A cluster made before every disk had its own CHAP secret: its disks were
    /// open to anyone with the node's initiator name. Never left so: its targets are
    /// removed and the cluster is marked failed with what to do.
    private func close(_ cluster: Versioned<VirtualCluster>) async throws {
        let message = StepRunner.noSecret(cluster.value.name)
        node.logger.error(
            "closing the disks of a cluster without CHAP secrets", metadata: ["cluster": "\(cluster.value.name)"])
        for vm in cluster.value.vms where vm.node == node.name {
            try await node.exporter.unexport(iqn: vm.diskIQN, account: nil)
        }
        guard cluster.value.state != .failed || cluster.value.message != message else { return }
        var failed = cluster
        failed.value.state = .failed
        failed.value.message = message
        failed.value.updatedAt = node.now()
        try await node.catalog.update(failed)
    }
}
