import Foundation
import Libvirt
import Logging
import VCCatalog
import VCModel
import VCNetwork

/// Create, suspend, resume and destroy of virtual clusters. Each operation is journaled in
/// the catalog before its first host change (the operation key, which also keeps other
/// operations off the cluster), runs in a task of its own so that it completes even if
/// the client goes away, and reports progress as a stream of events.
public struct ClusterLifecycle: Sendable {
    let node: PeerNode

    public init(node: PeerNode) { self.node = node }

    private var catalog: Catalog { node.catalog }

    // MARK: - create

    public func create(_ spec: ClusterSpec) async throws(DaemonError) -> AsyncStream<OperationEvent> {
        do {
            try spec.validate()
            guard let image = try await catalog.image(spec.image)?.value, image.state == .ready else {
                let known = try await catalog.images().filter { $0.state == .ready }.map(\.name)
                let hint =
                    known.isEmpty
                    ? "import one with 'vc image import NAME FILE'" : "known images: \(known.joined(separator: ", "))"
                throw DaemonError.notFound("no image named '\(spec.image)'; \(hint)")
            }
            if try await catalog.cluster(spec.name) != nil {
                throw CatalogError.alreadyExists(kind: "cluster", name: spec.name)
            }
            try node.capacity.admit(spec, committedMiB: try await node.committedMemoryMiB())
            try await refuseExistingResources(spec)

            let (cluster, operation) = try await claim(spec)
            let (stream, events) = AsyncStream<OperationEvent>.makeStream()
            events.yield(
                .step("planned \(cluster.vms.count) VMs on \(cluster.network.cidr) (\(cluster.network.bridge))"))
            Task { await runCreate(cluster, image: image, operation: operation, events: events) }
            return stream
        } catch {
            throw DaemonError.from(error)
        }
    }

    /// Picks a free subnet and records the cluster and its create operation atomically;
    /// retries with the next subnet when a concurrent create took it first.
    private func claim(_ spec: ClusterSpec) async throws -> (VirtualCluster, ClusterOperation) {
        var tried = await ClusterBridge.subnetsInUseOnHost(bridgePrefix: node.addresses.bridgePrefix)
        for _ in 0..<8 {
            let used = try await catalog.usedSubnets().union(tried)
            guard let subnet = AddressPlan.firstFree(used: used) else {
                throw ModelError.noFreeSubnet(limit: AddressPlan.subnets.count)
            }
            let now = node.now()
            let cluster = ClusterLayout.make(
                spec: spec, subnet: subnet, node: node.name, addresses: node.addresses, now: now)
            let operation = ClusterOperation(
                id: UUID().uuidString, kind: .create, cluster: spec.name, node: node.name, startedAt: now)
            do {
                try await catalog.beginCreate(cluster, operation: operation)
                return (cluster, operation)
            } catch .conflict {
                tried.insert(subnet)
            }
        }
        throw DaemonError.conflict("could not claim a network for '\(spec.name)': too many concurrent creates; retry")
    }

    /// A libvirt domain or an iSCSI target with one of the new VMs' names would be taken
    /// over by the create, and removed by its rollback: refuse before anything is made.
    private func refuseExistingResources(_ spec: ClusterSpec) async throws {
        let names = (1...spec.vms).map { Naming.vmName(cluster: spec.name, index: $0) }
        let taken = try await node.hypervisor.run { conn in
            try names.filter { try conn.domain(named: $0) != nil }
        }
        if let first = taken.first {
            throw DaemonError.conflict("a libvirt domain named '\(first)' already exists; choose another cluster name")
        }
        let iqns = Set(names.map(Naming.diskIQN(vm:)))
        if let target = try await node.exporter.targets().first(where: { iqns.contains($0.iqn) }) {
            throw DaemonError.conflict(
                "iSCSI target \(target.iqn) already exists on this node; choose another cluster name")
        }
    }

    private func runCreate(
        _ cluster: VirtualCluster, image: GoldenImage, operation: ClusterOperation,
        events: AsyncStream<OperationEvent>.Continuation
    ) async {
        var logger = node.logger
        logger[metadataKey: "cluster"] = "\(cluster.name)"
        let started = ContinuousClock.now
        let runner = StepRunner(node: node, cluster: cluster, image: image)
        var execution = PlanExecution(runner: runner, events: events)
        if let failAfter = node.configuration.testing.failCreateAfterVMs {
            execution.machineCompleted = { done in
                if done >= failAfter {
                    throw DaemonError.failed("injected failure after \(done) VMs (testing.failCreateAfterVMs)")
                }
            }
        }
        do {
            try await execution.perform(ClusterPlan.create(cluster))
            var done = cluster
            done.state = .running
            done.updatedAt = node.now()
            try await catalog.finish(operation, cluster: done)
            logger.info(
                "created", metadata: ["vms": "\(cluster.vms.count)", "seconds": "\(ContinuousClock.now - started)"])
            events.yield(OperationEvent(kind: .done, message: "cluster \(cluster.name) is running", cluster: done))
        } catch {
            let reason = DaemonError.from(error)
            logger.error("create failed; rolling back", metadata: ["error": "\(reason)"])
            events.yield(.step("create failed: \(reason); rolling back"))
            await rollBack(cluster, operation: operation, reason: reason, events: events)
            events.yield(
                OperationEvent(kind: .failed, error: APIError(code: reason.code, message: "\(reason) (rolled back)")))
        }
        events.finish()
    }

    /// Undoes everything a create may have made and forgets the cluster. If something
    /// could not be undone the cluster stays, marked failed, for `destroy` to retry.
    func rollBack(
        _ cluster: VirtualCluster, operation: ClusterOperation, reason: DaemonError,
        events: AsyncStream<OperationEvent>.Continuation
    ) async {
        do {
            _ = try await tearDown(cluster, operation: operation, events: events) { left in
                "create failed (\(reason)) and rollback left: \(left); run 'vc cluster destroy \(cluster.name)'"
            }
        } catch {
            node.logger.error(
                "could not record rollback", metadata: ["cluster": "\(cluster.name)", "error": "\(error)"])
        }
    }

    /// Undoes every step a cluster may have had, then forgets it. If anything stays, the
    /// cluster is kept, marked failed with `explain(what stayed)`, and that message returned.
    private func tearDown(
        _ cluster: VirtualCluster, operation: ClusterOperation, events: AsyncStream<OperationEvent>.Continuation,
        explain: (String) -> String
    ) async throws -> String? {
        let execution = PlanExecution(runner: StepRunner(node: node, cluster: cluster, image: nil), events: events)
        let problems = await execution.undo(ClusterPlan.teardown(cluster))
        guard !problems.isEmpty else {
            try await catalog.forget(cluster, operation: operation)
            return nil
        }
        var failed = cluster
        failed.state = .failed
        failed.message = explain(problems.joined(separator: "; "))
        failed.updatedAt = node.now()
        try await catalog.finish(operation, cluster: failed)
        return failed.message
    }

    // MARK: - suspend, resume, destroy

    public func suspend(_ name: String) async throws(DaemonError) -> AsyncStream<OperationEvent> {
        try await transition(
            name, kind: .suspend, allowedFrom: [.running, .failed], already: .suspended, during: .suspending,
            to: .suspended
        ) {
            ClusterPlan.suspend($0)
        }
    }

    public func resume(_ name: String) async throws(DaemonError) -> AsyncStream<OperationEvent> {
        do {
            if let c = try await catalog.cluster(name)?.value, c.state == .suspended {
                try node.capacity.admit(c.spec, committedMiB: try await node.committedMemoryMiB(excluding: name))
            }
        } catch {
            throw DaemonError.from(error)
        }
        return try await transition(
            name, kind: .resume, allowedFrom: [.suspended, .failed], already: .running, during: .resuming, to: .running
        ) {
            ClusterPlan.resume($0)
        }
    }

    public func destroy(_ name: String) async throws(DaemonError) -> AsyncStream<OperationEvent> {
        let cluster: Versioned<VirtualCluster>
        let operation: ClusterOperation
        do {
            try NameRule.checkCluster(name)
            guard let found = try await catalog.cluster(name) else {
                throw CatalogError.notFound(kind: "cluster", name: name)
            }
            operation = ClusterOperation(
                id: UUID().uuidString, kind: .destroy, cluster: name, node: node.name, startedAt: node.now())
            cluster = try await catalog.begin(operation, on: found, state: .destroying, now: node.now())
        } catch {
            throw DaemonError.from(error)
        }
        let (stream, events) = AsyncStream<OperationEvent>.makeStream()
        Task {
            await runDestroy(cluster.value, operation: operation, events: events)
            events.finish()
        }
        return stream
    }

    func runDestroy(
        _ cluster: VirtualCluster, operation: ClusterOperation, events: AsyncStream<OperationEvent>.Continuation
    ) async {
        do {
            if let left = try await tearDown(
                cluster, operation: operation, events: events,
                explain: {
                    "destroy left: \($0); run destroy again"
                })
            {
                events.yield(OperationEvent(kind: .failed, error: APIError(code: "failed", message: left)))
            } else {
                node.logger.info("destroyed", metadata: ["cluster": "\(cluster.name)"])
                events.yield(OperationEvent(kind: .done, message: "cluster \(cluster.name) is destroyed"))
            }
        } catch {
            events.yield(OperationEvent(kind: .failed, error: DaemonError.from(error).apiError))
        }
    }

    /// A state change driven by a plan: journal it, run it, record the outcome.
    private func transition(
        _ name: String, kind: ClusterOperation.Kind, allowedFrom: Set<ClusterState>, already: ClusterState,
        during: ClusterState, to target: ClusterState, plan: @escaping @Sendable (VirtualCluster) -> ClusterPlan
    ) async throws(DaemonError) -> AsyncStream<OperationEvent> {
        let (stream, events) = AsyncStream<OperationEvent>.makeStream()
        let cluster: Versioned<VirtualCluster>
        let operation: ClusterOperation
        do {
            try NameRule.checkCluster(name)
            guard let found = try await catalog.cluster(name) else {
                throw CatalogError.notFound(kind: "cluster", name: name)
            }
            if found.value.state == already, try await catalog.operation(name) == nil {
                events.yield(
                    OperationEvent(
                        kind: .done, message: "cluster \(name) is already \(already.rawValue)", cluster: found.value))
                events.finish()
                return stream
            }
            guard allowedFrom.contains(found.value.state) else {
                throw DaemonError.conflict(
                    "cluster '\(name)' is \(found.value.state.rawValue); it cannot \(kind.rawValue) from there")
            }
            operation = ClusterOperation(
                id: UUID().uuidString, kind: kind, cluster: name, node: node.name, startedAt: node.now())
            cluster = try await catalog.begin(operation, on: found, state: during, now: node.now())
        } catch {
            throw DaemonError.from(error)
        }
        Task {
            await runTransition(
                cluster.value, operation: operation, plan: plan(cluster.value), to: target, events: events)
            events.finish()
        }
        return stream
    }

    func runTransition(
        _ cluster: VirtualCluster, operation: ClusterOperation, plan: ClusterPlan, to target: ClusterState,
        events: AsyncStream<OperationEvent>.Continuation
    ) async {
        let started = ContinuousClock.now
        let execution = PlanExecution(runner: StepRunner(node: node, cluster: cluster, image: nil), events: events)
        var outcome = cluster
        outcome.updatedAt = node.now()
        do {
            try await execution.perform(plan)
            outcome.state = target
            try await catalog.finish(operation, cluster: outcome)
            node.logger.info(
                "\(operation.kind.rawValue)d",
                metadata: ["cluster": "\(cluster.name)", "seconds": "\(ContinuousClock.now - started)"])
            events.yield(
                OperationEvent(kind: .done, message: "cluster \(cluster.name) is \(target.rawValue)", cluster: outcome))
        } catch {
            let reason = DaemonError.from(error)
            outcome.state = .failed
            outcome.message = "\(operation.kind.rawValue) failed: \(reason); run it again"
            try? await catalog.finish(operation, cluster: outcome)
            events.yield(OperationEvent(kind: .failed, error: APIError(code: reason.code, message: outcome.message!)))
        }
    }

    // MARK: - reading

    public func list() async throws(DaemonError) -> [VirtualCluster] {
        do {
            return try await catalog.clusters().map(\.value).sorted { $0.name < $1.name }
        } catch {
            throw DaemonError.from(error)
        }
    }

    public func status(_ name: String) async throws(DaemonError) -> ClusterStatus {
        do {
            try NameRule.checkCluster(name)
            guard let cluster = try await catalog.cluster(name)?.value else {
                throw CatalogError.notFound(kind: "cluster", name: name)
            }
            let operation = try await catalog.operation(name)
            let states = try await node.hypervisor.run { conn in
                try cluster.vms.map { vm -> String in
                    guard let d = try conn.domain(named: vm.name) else { return "missing" }
                    return try d.state().rawValue
                }
            }
            let vms = zip(cluster.vms, states).map { vm, state in
                let saved = node.pool.exists(vm.saveFile)
                return VMStatus(
                    name: vm.name, ip: vm.ip, mac: vm.mac, node: vm.node,
                    domain: saved && state == "shutoff" ? "saved" : state,
                    disk: vm.diskIQN)
            }
            return ClusterStatus(cluster: cluster, vms: vms, operation: operation)
        } catch {
            throw DaemonError.from(error)
        }
    }

    /// The serial console of a VM from `offset` on.
    public func console(vm: String, offset: UInt64) async throws(DaemonError) -> (bytes: [UInt8], next: UInt64) {
        do {
            let cluster = try await catalog.clusters().map(\.value).first { $0.vms.contains { $0.name == vm } }
            guard let cluster else { throw DaemonError.notFound("no VM named '\(vm)'; see 'vc cluster show CLUSTER'") }
            let path = node.consolePath(cluster: cluster.name, vm: vm)
            guard let handle = FileHandle(forReadingAtPath: path) else { return ([], offset) }
            defer { try? handle.close() }
            let end = try handle.seekToEnd()
            let start = min(offset, end)
            try handle.seek(toOffset: start)
            let data = try handle.read(upToCount: Int(min(end - start, 4 << 20))) ?? Data()
            return (Array(data), start + UInt64(data.count))
        } catch {
            throw DaemonError.from(error)
        }
    }
}
