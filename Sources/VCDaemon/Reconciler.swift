import Logging
import ServiceLifecycle
import VCCatalog
import VCModel

/// Makes this node's share of the world match the catalog. At start it first finishes or
/// undoes the operations this node was running when it stopped (the journal), then, every
/// `interval`, it re-makes what a restart of the host, tgtd or dnsmasq loses: bridges,
/// DHCP servers, exports, and the VMs of running clusters.
public struct Reconciler: Service, CustomStringConvertible {
    public var description: String { "Reconciler" }
    let node: PeerNode
    let lifecycle: ClusterLifecycle
    let images: ImageLibrary
    public func run() async throws {
        await recoverOperations()
        await images.recover()
        let seconds = node.configuration.reconcileIntervalSeconds
        await reconcile()
        guard seconds > 0 else {
            try? await gracefulShutdown()
            return
        }
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(seconds)) }
            await reconcile()
        }
    }

    /// Finishes or undoes every operation this node left in the journal.
    func recoverOperations() async {
        let operations: [ClusterOperation]
        do {
            operations = try await node.catalog.operations().filter { $0.node == node.name }
        } catch {
            if !Task.isCancelled {
                node.logger.error("cannot read the operation journal", metadata: ["error": "\(error)"])
            }
            return
        }
        for operation in operations {
            var logger = node.logger
            logger[metadataKey: "cluster"] = "\(operation.cluster)"
            let (_, events) = AsyncStream<OperationEvent>.makeStream()
            guard let cluster = try? await node.catalog.cluster(operation.cluster)?.value else {
                logger.warning("dropping a journal entry without its cluster")
                try? await node.catalog.etcd.delete(node.catalog.operationKey(operation.cluster))
                continue
            }
            logger.notice(
                "recovering an interrupted operation",
                metadata: ["operation": "\(operation.kind.rawValue)", "recovery": "\(operation.recovery)"])
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
            events.finish()
        }
    }

    /// One pass over the clusters that have VMs here and no operation running.
    func reconcile() async {
        do {
            let busy = Set(try await node.catalog.operations().map(\.cluster))
            for cluster in try await node.catalog.clusters().map(\.value)
            where cluster.state == .running && !busy.contains(cluster.name)
                && cluster.vms.contains(where: { $0.node == node.name })
            {
                let runner = StepRunner(node: node, cluster: cluster, image: nil)
                do {
                    try await runner.perform(.bridge)
                    try await runner.perform(.dhcp)
                    for vm in cluster.vms where vm.node == node.name {
                        try await runner.perform(.export(vm: vm.name))
                        let active = try await node.hypervisor.run { try $0.domain(named: vm.name)?.isActive ?? false }
                        if active {
                            // A crash between start and release leaves it paused.
                            try await runner.perform(.release(vm: vm.name))
                        } else {
                            node.logger.notice("starting a VM that should run", metadata: ["vm": "\(vm.name)"])
                            try await runner.perform(.verify(vm: vm.name))
                            if try await node.hypervisor.run({ try $0.domain(named: vm.name) == nil }) {
                                try await runner.perform(.define(vm: vm.name))
                            }
                            try await runner.perform(.start(vm: vm.name))
                            try await runner.perform(.release(vm: vm.name))
                        }
                    }
                } catch {
                    node.logger.warning(
                        "reconcile failed",
                        metadata: ["cluster": "\(cluster.name)", "error": "\(DaemonError.from(error))"])
                }
            }
        } catch {
            node.logger.warning("reconcile skipped", metadata: ["error": "\(DaemonError.from(error))"])
        }
    }
}
