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

    var catalog: Catalog { node.catalog }

    // MARK: - create

    public func create(_ spec: ClusterSpec) async throws(DaemonError) -> AsyncStream<OperationEvent> {
        let image: GoldenImage
        do {
            try spec.validate()
            guard let found = try await catalog.image(spec.image)?.value, found.state == .ready else {
                let known = try await catalog.images().filter { $0.state == .ready }.map(\.name)
                let hint =
                    known.isEmpty
                    ? "import one with 'vc image import NAME FILE'" : "known images: \(known.joined(separator: ", "))"
                throw DaemonError.notFound("no image named '\(spec.image)'; \(hint)")
            }
            image = found
            if try await catalog.cluster(spec.name) != nil {
                throw CatalogError.alreadyExists(kind: "cluster", name: spec.name)
            }
            try await lock(spec.name)
        } catch {
            throw DaemonError.from(error)
        }
        do {
            try await refuseExistingResources(spec)
            let hostSubnets = await ClusterBridge.subnetsInUseOnHost(bridgePrefix: node.addresses.bridgePrefix)
            let (cluster, operation, secrets) = try await node.admission.admit { () async throws in
                try await admissionDelay()
                return try await claim(spec, avoiding: hostSubnets)
            }
            let (stream, events) = AsyncStream<OperationEvent>.makeStream()
            events.yield(
                .step("planned \(cluster.vms.count) VMs on \(cluster.network.cidr) (\(cluster.network.bridge))"))
            let started = node.operations.start {
                await runCreate(cluster, image: image, secrets: secrets, operation: operation, events: events)
                await node.locks.unlock(spec.name)
            }
            // Stopping between the journal write and here: the next start undoes the create.
            guard started else { throw DaemonError.unavailable(Self.stoppingMessage) }
            return stream
        } catch {
            await node.locks.unlock(spec.name)
            throw DaemonError.from(error)
        }
    }

    static let stoppingMessage = "vcd is stopping; the operation is journaled and continues when vcd starts again"

    /// How long an operation waits behind a repair pass of its cluster.
    static let repairPatience = Duration.seconds(30)

    /// Makes this task the only one on this node working on the cluster. A repair pass
    /// that holds the cluster is waited for; another operation is not.
    private func lock(_ name: String) async throws(DaemonError) {
        do {
            try await node.locks.lockForOperation(name, patience: Self.repairPatience)
        } catch {
            switch error {
            case .busy:
                throw .conflict(
                    "cluster '\(name)' is busy: another operation on it is running on this node; retry when it ends")
            case .repairTooLong:
                throw .conflict(
                    "cluster '\(name)' is busy: vcd has been repairing it for \(Self.repairPatience); see 'journalctl -u vcd' and retry"
                )
            }
        }
    }

    /// Widens the admission window for the tests that prove two admissions never overlap.
    private func admissionDelay() async throws {
        if let delay = node.configuration.testing.admissionDelayMilliseconds {
            try await Task.sleep(for: .milliseconds(delay))
        }
    }

    /// Writes an operation's outcome, riding out a passing etcd outage or leader change (an
    /// election takes seconds). `Catalog.finish` and `forget` recognise a write that
    /// already landed, so a retried write that had been applied does no harm.
    func commit(_ write: () async throws(CatalogError) -> Void) async throws(CatalogError) {
        try await RetryPolicy.catalogWrite.run(
            onRetry: { error, attempt in
                node.logger.warning(
                    "catalog write failed; retrying",
                    metadata: [
                        "error": "\(error)", "attempt": "\(attempt)", "etcd": "\(node.configuration.etcd.endpoint)",
                    ])
            }, write)
    }

    /// Places the VMs, picks a free subnet and records the cluster, its disks' fresh CHAP
    /// secrets, its create operation and the memory it commits on each node atomically;
    /// retries with the next subnet when a concurrent create took it first, and places
    /// again when a concurrent create or resume committed memory on one of its nodes.
    private func claim(_ spec: ClusterSpec, avoiding hostSubnets: Set<Int>) async throws -> (
        VirtualCluster, ClusterOperation, ClusterSecrets
    ) {
        var tried = hostSubnets
        for _ in 0..<8 {
            let used = try await catalog.usedSubnets().union(tried)
            guard let subnet = AddressPlan.firstFree(used: used) else {
                throw ModelError.noFreeSubnet(limit: AddressPlan.subnets.count)
            }
            let now = node.now()
            let world = try await PlacementWorld.read(node)
            let placements = try world.place(PlacementRequest(spec: spec))
            var cluster = ClusterLayout.make(
                spec: spec, subnet: subnet, placements: placements, addresses: node.addresses, now: now)
            try assignNodeAddresses(&cluster)
            let operation = ClusterOperation(
                id: UUID().uuidString, kind: .create, cluster: spec.name, node: node.name, startedAt: now)
            var random = SystemRandomNumberGenerator()
            let secrets = ClusterSecrets.make(for: cluster.vms, using: &random)
            do {
                try await catalog.beginCreate(
                    cluster, secrets: secrets, operation: operation, commitments: world.commitments(for: cluster))
                return (cluster, operation, secrets)
            } catch .conflict(let key) {
                if key == catalog.subnetKey(subnet) { tried.insert(subnet) }
            }
        }
        throw DaemonError.conflict("could not claim a network for '\(spec.name)': too many concurrent creates; retry")
    }

    /// On several nodes, every node hosting one of the VMs gets its own address on the
    /// cluster network, kept for the nodes that keep hosting it. A single node without an
    /// underlay holds the gateway address instead.
    /// `alsoHosting` are nodes that keep hosting the network a while without a VM placed
    /// on them: the origins of a migration, whose guests run there until they move.
    func assignNodeAddresses(_ cluster: inout VirtualCluster, alsoHosting: Set<String> = []) throws(ModelError) {
        guard node.configuration.network.underlay != nil else { return }
        cluster.network.nodeAddresses = try node.addresses.nodeAddresses(
            subnet: cluster.network.subnet, nodes: Set(cluster.vms.map(\.node)).union(alsoHosting),
            keeping: cluster.network.nodeAddresses)
    }

    /// A libvirt domain or an iSCSI target with one of the new VMs' names would be taken
    /// over by the create, and removed by its rollback: refuse before anything is made.
    private func refuseExistingResources(_ spec: ClusterSpec) async throws {
        // What this node can see; on other nodes, a leftover of the same name is removed
        // by their reconciler (it is placed nowhere) and a domain is redefined by the create.
        let names = (1...spec.vms).map { Naming.vmName(cluster: spec.name, index: $0) }
        let taken =
            node.has(.compute)
            ? try await node.hypervisor.run { conn in try names.filter { try conn.domain(named: $0) != nil } } : []
        if let first = taken.first {
            throw DaemonError.conflict("a libvirt domain named '\(first)' already exists; choose another cluster name")
        }
        let iqns = Set(names.map(Naming.diskIQN(vm:)))
        if node.has(.storage), let target = try await node.exporter.targets().first(where: { iqns.contains($0.iqn) }) {
            throw DaemonError.conflict(
                "iSCSI target \(target.iqn) already exists on this node; choose another cluster name")
        }
    }

    private func runCreate(
        _ cluster: VirtualCluster, image: GoldenImage, secrets: ClusterSecrets, operation: ClusterOperation,
        events: AsyncStream<OperationEvent>.Continuation
    ) async {
        var logger = node.logger
        logger[metadataKey: "cluster"] = "\(cluster.name)"
        let started = ContinuousClock.now
        let runner = StepRunner(node: node, cluster: cluster, image: image, secrets: secrets)
        var execution = PlanExecution(runner: runner, events: events)
        if let failAfter = node.configuration.testing.failCreateAfterVMs {
            execution.machineCompleted = { done in
                if done >= failAfter {
                    throw DaemonError.failed("injected failure after \(done) VMs (testing.failCreateAfterVMs)")
                }
            }
        }
        defer { events.finish() }
        do {
            try await execution.perform(ClusterPlan.create(cluster))
        } catch is OperationStopped {
            // Left journaled: the next vcd to start undoes it, with every thread pool alive.
            logger.notice("stopping midway; the create is undone at the next start")
            events.yield(
                OperationEvent(
                    kind: .failed,
                    error: APIError(
                        code: "unavailable",
                        message:
                            "vcd is stopping: cluster \(cluster.name) was not completed and is undone when vcd starts again"
                    )))
            return
        } catch {
            let reason = DaemonError.from(error)
            logger.error("create failed; rolling back", metadata: ["error": "\(reason)"])
            events.yield(.step("create failed: \(reason); rolling back"))
            let left = await rollBack(cluster, operation: operation, reason: reason, events: events)
            let message = left.map { "\(reason); \($0)" } ?? "\(reason) (rolled back)"
            events.yield(OperationEvent(kind: .failed, error: APIError(code: reason.code, message: message)))
            return
        }
        var done = cluster
        done.state = .running
        done.updatedAt = node.now()
        do {
            try await commit { () async throws(CatalogError) in try await catalog.finish(operation, cluster: done) }
        } catch {
            // The journal stays: the next reconcile pass finds it orphaned and undoes the create.
            let message =
                "cluster \(cluster.name) was made but the catalog did not record it (\(error)); it will be undone"
            events.yield(OperationEvent(kind: .failed, error: APIError(code: "unavailable", message: message)))
            return
        }
        logger.info(
            "created", metadata: ["vms": "\(cluster.vms.count)", "seconds": "\(ContinuousClock.now - started)"])
        events.yield(OperationEvent(kind: .done, message: "cluster \(cluster.name) is running", cluster: done))
    }

    /// Undoes everything a create may have made and forgets the cluster. If something
    /// could not be undone the cluster stays, marked failed, for `destroy` to retry; the
    /// returned text says what stayed (nil when nothing did).
    @discardableResult
    func rollBack(
        _ cluster: VirtualCluster, operation: ClusterOperation, reason: DaemonError,
        events: AsyncStream<OperationEvent>.Continuation
    ) async -> String? {
        do {
            return try await tearDown(cluster, operation: operation, events: events) { left in
                "rollback left: \(left); run 'vc cluster destroy \(cluster.name)'"
            }
        } catch {
            node.logger.error(
                "could not record rollback", metadata: ["cluster": "\(cluster.name)", "error": "\(error)"])
            return "the rollback could not be recorded in the catalog (\(error)); vcd retries it"
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
        if !problems.isEmpty && node.operations.isStopping {
            // Not a failure to record: the journal stays and the next start goes on with it.
            node.logger.notice("stopping midway; the teardown goes on at the next start")
            return Self.stoppingMessage
        }
        guard !problems.isEmpty else {
            try await commit { () async throws(CatalogError) in try await catalog.forget(cluster, operation: operation)
            }
            return nil
        }
        var failed = cluster
        failed.state = .failed
        failed.message = explain(problems.joined(separator: "; "))
        failed.updatedAt = node.now()
        try await commit { () async throws(CatalogError) in try await catalog.finish(operation, cluster: failed) }
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
        try await transition(
            name, kind: .resume, allowedFrom: [.suspended, .failed], already: .running, during: .resuming, to: .running
        ) {
            ClusterPlan.resume($0)
        }
    }

    public func destroy(_ name: String) async throws(DaemonError) -> AsyncStream<OperationEvent> {
        try await launch(name, kind: .destroy, state: .destroying, precheck: { _ in nil }) {
            cluster, operation, events in
            await runDestroy(cluster, operation: operation, events: events)
        }
    }

    /// Places again and starts `vms`, whose incarnations were fenced at the storage after
    /// their node died (`NodeLoss`): each gets a new generation on a live node and boots
    /// from its own disk, as the guest left it. Journaled like any operation, so a vcd that
    /// dies midway is finished by another; no other VM of the cluster is touched.
    public func recover(_ name: String, vms: [String]) async throws(DaemonError) -> AsyncStream<OperationEvent> {
        try await launch(
            name, kind: .recover, state: .running, moving: vms,
            precheck: { (found) throws(DaemonError) -> OperationEvent? in
                guard found.state == .running else {
                    throw .conflict("cluster '\(name)' is \(found.state.rawValue); only a running one is recovered")
                }
                return nil
            },
            work: { cluster, operation, events in
                var recovered = cluster
                recovered.message = nil
                await runTransition(
                    recovered, operation: operation, plan: .recover(cluster, vms: vms), to: .running, events: events)
            })
    }

    /// Starts an operation on an existing cluster: takes this node's lock on it, lets
    /// `precheck` refuse it or answer at once (a no-op), journals it in the catalog, and runs
    /// `work` in a task of its own that releases the lock when done.
    func launch(
        _ name: String, kind: ClusterOperation.Kind, state: ClusterState, moving: [String]? = nil,
        precheck: (VirtualCluster) throws(DaemonError) -> OperationEvent?,
        work:
            @escaping @Sendable (VirtualCluster, ClusterOperation, AsyncStream<OperationEvent>.Continuation) async ->
            Void
    ) async throws(DaemonError) -> AsyncStream<OperationEvent> {
        let (stream, events) = AsyncStream<OperationEvent>.makeStream()
        do {
            try NameRule.checkCluster(name)
        } catch {
            throw DaemonError.from(error)
        }
        try await lock(name)
        let cluster: Versioned<VirtualCluster>
        let operation: ClusterOperation
        do {
            guard let found = try await catalog.cluster(name) else {
                throw CatalogError.notFound(kind: "cluster", name: name)
            }
            if try await catalog.operation(name) == nil, let answer = try precheck(found.value) {
                await node.locks.unlock(name)
                events.yield(answer)
                events.finish()
                return stream
            }
            var origins: [String: ClusterOperation.Origin]? = nil
            if kind == .migrate {
                origins = Dictionary(
                    found.value.vms.filter { (moving ?? []).contains($0.name) }.map {
                        ($0.name, ClusterOperation.Origin(node: $0.node, generation: $0.generation))
                    }, uniquingKeysWith: { a, _ in a })
            }
            operation = ClusterOperation(
                id: UUID().uuidString, kind: kind, cluster: name, node: node.name, startedAt: node.now(), vms: moving,
                origins: origins)
            if kind == .resume || kind == .recover || kind == .migrate {
                // A suspended cluster commits no memory; leaving that state, it is placed
                // again (on any live node), checked and recorded as one step. Every other
                // transition only frees memory.
                cluster = try await node.admission.admit { () async throws in
                    try await admissionDelay()
                    return try await replace(found, operation: operation, state: state, moving: Set(moving ?? []))
                }
            } else {
                cluster = try await catalog.begin(operation, on: found, state: state, now: node.now())
            }
        } catch {
            await node.locks.unlock(name)
            throw DaemonError.from(error)
        }
        let started = node.operations.start {
            await work(cluster.value, operation, events)
            events.finish()
            await node.locks.unlock(name)
        }
        guard started else {
            // Journaled already: the next start finishes it.
            await node.locks.unlock(name)
            throw .unavailable(Self.stoppingMessage)
        }
        return stream
    }

    /// Places a cluster's VMs for a resume and opens the operation in one transaction. A VM
    /// keeps its node while that node is ready and has room; every VM that starts afresh
    /// (all of a suspended cluster, the moved ones of a failed cluster) gets a new
    /// generation, and so an initiator name never admitted before.
    ///
    /// `moving` VMs, and every VM whose incarnation was fenced (`NodeLoss`), are placed
    /// anew with a new generation wherever they land, their node's state notwithstanding.
    private func replace(
        _ found: Versioned<VirtualCluster>, operation: ClusterOperation, state: ClusterState,
        moving explicit: Set<String> = []
    ) async throws -> Versioned<VirtualCluster> {
        var current = found
        for _ in 0..<8 {
            let world = try await PlacementWorld.read(node)
            let fenced = NodeLoss.names(try await catalog.fenced())
            let moving = explicit.union(current.value.vms.filter { fenced.contains($0.initiator) }.map(\.name))
            // Until a dead node is fenced at the storage, its QEMUs may still be writing:
            // only a suspended cluster (no VM running anywhere) may move off it.
            if current.value.state != .suspended,
                let stranded = current.value.vms.first(where: {
                    world.state(of: $0.node) == .dead && !moving.contains($0.name)
                })
            {
                throw DaemonError.conflict(
                    "\(stranded.name) is placed on node \(stranded.node), which is down; it cannot be started elsewhere until that node is fenced: bring \(stranded.node) back, or destroy the cluster"
                )
            }
            let keep = Dictionary(
                current.value.vms.filter { world.state(of: $0.node) != .dead && !moving.contains($0.name) }.map {
                    ($0.name, $0.node)
                },
                uniquingKeysWith: { a, _ in a })
            var request = PlacementRequest(spec: current.value.spec, keep: keep)
            // A drain moves VMs off the node they are pinned to: the pin cannot hold (as in
            // `DrainPlan`).
            if operation.kind == .migrate, let pin = request.pin,
                operation.origins?.values.contains(where: { $0.node == pin }) == true
            {
                request.pin = nil
            }
            let placements = try world.place(request)
            var placed = current.value
            let fresh = current.value.state == .suspended
            for i in placed.vms.indices {
                let target = placements[placed.vms[i].name] ?? placed.vms[i].node
                if fresh || target != placed.vms[i].node || moving.contains(placed.vms[i].name) {
                    placed.vms[i].node = target
                    placed.vms[i].generation = placed.vms[i].nextGeneration
                }
            }
            try assignNodeAddresses(&placed, alsoHosting: Set(operation.origins?.values.map(\.node) ?? []))
            placed.state = state
            let commitments = world.commitments(for: placed)
            let outcome: Result<Versioned<VirtualCluster>, CatalogError>
            do {
                outcome = .success(
                    try await catalog.begin(
                        operation, on: current, state: state, now: node.now(), placed: placed,
                        commitments: commitments))
            } catch {
                outcome = .failure(error)
            }
            switch outcome {
            case .success(let begun): return begun
            case .failure(.conflict):
                // Another placement committed on one of the nodes, or the record changed.
                guard let again = try await catalog.cluster(found.value.name) else {
                    throw CatalogError.notFound(kind: "cluster", name: found.value.name)
                }
                current = again
            case .failure(let error): throw error
            }
        }
        throw DaemonError.conflict(
            "could not place '\(found.value.name)': too many concurrent creates and resumes; retry")
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
                let code = node.operations.isStopping ? "unavailable" : "failed"
                events.yield(OperationEvent(kind: .failed, error: APIError(code: code, message: left)))
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
        try await launch(
            name, kind: kind, state: during,
            precheck: { (found) throws(DaemonError) -> OperationEvent? in
                if found.state == already {
                    return OperationEvent(
                        kind: .done, message: "cluster \(name) is already \(already.rawValue)", cluster: found)
                }
                guard allowedFrom.contains(found.state) else {
                    throw .conflict(
                        "cluster '\(name)' is \(found.state.rawValue); it cannot \(kind.rawValue) from there")
                }
                return nil
            },
            work: { cluster, operation, events in
                await runTransition(cluster, operation: operation, plan: plan(cluster), to: target, events: events)
            })
    }

    func runTransition(
        _ cluster: VirtualCluster, operation: ClusterOperation, plan: ClusterPlan, to target: ClusterState,
        events: AsyncStream<OperationEvent>.Continuation
    ) async {
        let started = ContinuousClock.now
        var outcome = cluster
        outcome.updatedAt = node.now()
        do {
            // Read once for the whole plan, not by every export, verify and secret step.
            let secrets = try await catalog.secrets(cluster.name)
            let runner = StepRunner(node: node, cluster: cluster, image: nil, secrets: secrets)
            try await PlanExecution(runner: runner, events: events).perform(plan)
            outcome.state = target
        } catch is OperationStopped {
            node.logger.notice(
                "stopping midway; the operation goes on at the next start",
                metadata: ["cluster": "\(cluster.name)", "operation": "\(operation.kind.rawValue)"])
            events.yield(
                OperationEvent(kind: .failed, error: APIError(code: "unavailable", message: Self.stoppingMessage)))
            return
        } catch {
            let reason = DaemonError.from(error)
            outcome.state = .failed
            outcome.message = "\(operation.kind.rawValue) failed: \(reason); run it again"
            events.yield(OperationEvent(kind: .failed, error: APIError(code: reason.code, message: outcome.message!)))
        }
        guard await record(operation, outcome: outcome, events: events), outcome.state == target else { return }
        node.logger.info(
            "\(operation.kind.done)",
            metadata: ["cluster": "\(cluster.name)", "seconds": "\(ContinuousClock.now - started)"])
        events.yield(
            OperationEvent(kind: .done, message: "cluster \(cluster.name) is \(target.rawValue)", cluster: outcome))
    }

    /// Writes an operation's outcome and closes its journal; says on `events` when the
    /// catalog did not take it (the journal then stays, and the next reconcile pass finds
    /// it orphaned and finishes it). Returns whether it was recorded.
    func record(
        _ operation: ClusterOperation, outcome: VirtualCluster, events: AsyncStream<OperationEvent>.Continuation
    ) async -> Bool {
        do {
            try await commit { () async throws(CatalogError) in try await catalog.finish(operation, cluster: outcome) }
            return true
        } catch {
            events.yield(
                OperationEvent(
                    kind: .failed,
                    error: APIError(
                        code: "unavailable",
                        message: "the catalog did not record the \(operation.kind.rawValue): \(error); vcd retries it"))
            )
            return false
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

    /// Every cluster's summary, sorted by name: what `vc cluster list` shows.
    public func summaries() async throws(DaemonError) -> [ClusterSummary] {
        do {
            return try await catalog.clusterSummaries().sorted { $0.name < $1.name }
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
            let states = try await domainStates(cluster)
            let vms = cluster.vms.map { vm in
                let state = states[vm.name] ?? "unknown"
                return VMStatus(
                    name: vm.name, ip: vm.ip, mac: vm.mac, node: vm.node,
                    domain: cluster.state == .suspended && (state == "shutoff" || state == "missing") ? "saved" : state,
                    disk: vm.diskIQN)
            }
            return ClusterStatus(cluster: cluster, vms: vms, operation: operation)
        } catch {
            throw DaemonError.from(error)
        }
    }

    /// Each VM's domain state, asked of the node it is placed on. This node's own libvirtd
    /// not answering is an error (the command says so); another node down or not
    /// answering makes its VMs "unknown".
    func domainStates(_ cluster: VirtualCluster) async throws -> [String: String] {
        let byNode = Dictionary(grouping: cluster.vms, by: \.node)
        var all: [String: String] = [:]
        if let mine = byNode[node.name] { all = try await node.domainStates(mine.map(\.name)) }
        let others = byNode.filter { $0.key != node.name }
        let remote = await withTaskGroup(of: [String: String].self) { group in
            for (host, vms) in others {
                group.addTask {
                    let names = vms.map(\.name)
                    do {
                        guard let record = try await node.liveNode(host) else {
                            return Dictionary(
                                uniqueKeysWithValues: names.map { ($0, "unknown (node \(host) is down)") })
                        }
                        return try await node.peers.domainStates(names, on: record)
                    } catch {
                        node.logger.warning(
                            "cannot read domain states", metadata: ["node": "\(host)", "error": "\(error)"])
                        return [:]
                    }
                }
            }
            var merged: [String: String] = [:]
            for await part in group { merged.merge(part) { a, _ in a } }
            return merged
        }
        return all.merging(remote) { a, _ in a }
    }

    /// The serial console of a VM from `offset` on.
    public func console(vm: String, offset: UInt64) async throws(DaemonError) -> (bytes: [UInt8], next: UInt64) {
        do {
            let cluster = try await catalog.clusters().map(\.value).first { $0.vms.contains { $0.name == vm } }
            guard let cluster else { throw DaemonError.notFound("no VM named '\(vm)'; see 'vc cluster show CLUSTER'") }
            if let host = cluster.vms.first(where: { $0.name == vm })?.node, host != node.name {
                // The console file is on the node that runs the VM.
                guard let record = try await node.liveNode(host) else {
                    throw DaemonError.unavailable("node \(host), which runs \(vm), is down")
                }
                let (bytes, header) = try await node.peers.client(record).raw(
                    "/\(API.version)/vms/\(vm)/console?offset=\(offset)", header: "X-Console-Offset")
                return (bytes, header.flatMap(UInt64.init) ?? offset)
            }
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
