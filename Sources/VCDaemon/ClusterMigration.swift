import Foundation
import VCCatalog
import VCModel

/// Moving running VMs to other nodes while their guests run: what `vcnode drain` does to
/// each cluster with VMs on the node it empties.
extension ClusterLifecycle {
    /// Places `vms` of a running cluster anew, off the nodes they run on (which the
    /// caller cordoned), and moves each one there live (`ClusterPlan.migrate`). Journaled
    /// like any operation: one that fails, or whose vcd dies midway, is settled from what
    /// the nodes say of each VM (`MigrationOutcome`), never by guessing.
    public func migrate(_ name: String, vms: [String]) async throws(DaemonError) -> AsyncStream<OperationEvent> {
        try await launch(
            name, kind: .migrate, state: .running, moving: vms,
            precheck: { (found) throws(DaemonError) -> OperationEvent? in
                guard found.state == .running else {
                    throw .conflict(
                        "cluster '\(name)' is \(found.state.rawValue); only a running cluster's VMs move while they run"
                    )
                }
                let unknown = Set(vms).subtracting(found.vms.map(\.name))
                if let first = unknown.sorted().first {
                    throw .notFound("cluster '\(name)' has no VM named '\(first)'")
                }
                return nil
            },
            work: { cluster, operation, events in
                await runMigration(cluster, operation: operation, events: events)
            })
    }

    func runMigration(
        _ cluster: VirtualCluster, operation: ClusterOperation, events: AsyncStream<OperationEvent>.Continuation
    ) async {
        do {
            var runner = StepRunner(
                node: node, cluster: cluster, image: nil, secrets: try await catalog.secrets(cluster.name))
            runner.origins = operation.origins ?? [:]
            try await PlanExecution(runner: runner, events: events).perform(.migrate(cluster, vms: operation.vms ?? []))
        } catch is OperationStopped {
            events.yield(
                OperationEvent(kind: .failed, error: APIError(code: "unavailable", message: Self.stoppingMessage)))
            return
        } catch {
            await settleMigration(cluster, operation: operation, reason: DaemonError.from(error), events: events)
            return
        }
        var done = cluster
        done.state = .running
        done.updatedAt = node.now()
        // The origins that host nothing now give up their address on the network.
        try? assignNodeAddresses(&done)
        await close(operation, with: done, events: events)
    }

    /// Settles a migration that failed (`reason`) or whose vcd died midway (nil): each VM
    /// goes where the nodes say it runs, or, when it runs nowhere, starts on its
    /// destination. Leaves the journal in place, for the next reconcile pass, while any VM
    /// cannot be decided yet.
    func settleMigration(
        _ cluster: VirtualCluster, operation: ClusterOperation, reason: DaemonError?,
        events: AsyncStream<OperationEvent>.Continuation
    ) async {
        let origins = operation.origins ?? [:]
        var outcome = cluster
        outcome.updatedAt = node.now()
        var restarted: [String] = []
        var stayed: [String] = []
        do {
            let fenced = NodeLoss.names(try await catalog.fenced())
            for name in operation.vms ?? [] {
                guard let origin = origins[name], let i = outcome.vms.firstIndex(where: { $0.name == name }) else {
                    continue
                }
                let destination = outcome.vms[i]
                async let atOrigin = domainState(name, on: origin.node)
                async let atDestination = domainState(name, on: destination.node)
                let decision = MigrationOutcome.decide(
                    origin: await atOrigin, destination: await atDestination,
                    originFenced: fenced.contains(origin.initiator(vm: name)))
                switch decision {
                case .moved, .stopped:
                    restarted.append(name)
                case .stayed:
                    // Back to the incarnation that runs there; the destination's name was
                    // admitted, so the next placement goes above it.
                    outcome.vms[i].node = origin.node
                    outcome.vms[i].spentGeneration = max(destination.generation, destination.spentGeneration ?? 0)
                    outcome.vms[i].generation = origin.generation
                    stayed.append(name)
                case .undecided(let why):
                    node.logger.warning(
                        "a migration cannot be settled yet",
                        metadata: ["cluster": "\(cluster.name)", "vm": "\(name)", "why": "\(why)"])
                    events.yield(
                        OperationEvent(
                            kind: .failed,
                            error: APIError(
                                code: "unavailable",
                                message:
                                    "the migration of \(name) cannot be settled yet: \(why); vcd settles it when it can"
                            )))
                    return
                }
            }
            try assignNodeAddresses(&outcome, alsoHosting: Set(origins.values.map(\.node)))
            var runner = StepRunner(
                node: node, cluster: outcome, image: nil, secrets: try await catalog.secrets(cluster.name))
            runner.origins = origins
            try await PlanExecution(runner: runner, events: events).perform(
                .settleMigration(restarted: restarted, stayed: stayed))
            outcome.state = .running
            try assignNodeAddresses(&outcome)
            var said: [String] = []
            if let reason { said.append("migration failed: \(reason)") } else { said.append("migration interrupted") }
            if !stayed.isEmpty { said.append("\(stayed.sorted().joined(separator: ", ")) stayed where they ran") }
            if !restarted.isEmpty {
                said.append("\(restarted.sorted().joined(separator: ", ")) run on their new nodes")
            }
            outcome.message = reason == nil && stayed.isEmpty ? nil : said.joined(separator: "; ")
        } catch is OperationStopped {
            events.yield(
                OperationEvent(kind: .failed, error: APIError(code: "unavailable", message: Self.stoppingMessage)))
            return
        } catch {
            let why = DaemonError.from(error)
            outcome.state = .failed
            outcome.message =
                "migrate failed: \(reason.map { "\($0), then " } ?? "")\(why); run 'vc cluster resume \(cluster.name)'"
        }
        if let reason, outcome.state == .running {
            events.yield(
                OperationEvent(
                    kind: .failed, error: APIError(code: reason.code, message: outcome.message ?? "\(reason)")))
        }
        await close(operation, with: outcome, events: events, quiet: reason != nil)
    }

    /// Records the outcome and closes the journal; says so on `events` unless `quiet`.
    private func close(
        _ operation: ClusterOperation, with outcome: VirtualCluster, events: AsyncStream<OperationEvent>.Continuation,
        quiet: Bool = false
    ) async {
        // The origins that host none of its VMs now take its network down before the
        // journal closes (left to their reconcilers, a destroy right after a drain found
        // it there); one that cannot be reached now removes it at its next pass.
        let left = Set((operation.origins ?? [:]).values.map(\.node)).subtracting(outcome.vms.map(\.node))
        if outcome.state == .running && !left.isEmpty {
            do {
                try await StepRunner(node: node, cluster: outcome, image: nil).removeNetwork(from: left.sorted())
            } catch {
                node.logger.warning(
                    "the network stays on the nodes the VMs left until their reconcilers remove it",
                    metadata: ["cluster": "\(outcome.name)", "nodes": "\(left.sorted())", "error": "\(error)"])
            }
        }
        guard await record(operation, outcome: outcome, events: events) else { return }
        guard !quiet else { return }
        if outcome.state == .running {
            node.logger.info("migrated", metadata: ["cluster": "\(outcome.name)", "vms": "\(operation.vms ?? [])"])
            events.yield(
                OperationEvent(
                    kind: .done, message: outcome.message ?? "cluster \(outcome.name) is running", cluster: outcome))
        } else {
            events.yield(
                OperationEvent(
                    kind: .failed, error: APIError(code: "failed", message: outcome.message ?? "migrate failed")))
        }
    }

    /// What `host`'s libvirtd says of domain `vm`, nil when its vcd does not answer within
    /// 2 s. A node without a lease is asked too: one that answers knows.
    private func domainState(_ vm: String, on host: String) async -> String? {
        if host == node.name { return try? await node.domainStates([vm])[vm] }
        // The member record's read counts in the 2 s: an etcd that is electing holds it too.
        return await within(.seconds(2)) { () async -> String? in
            guard let record = try? await node.member(host) else { return nil }
            return try? await node.peers.domainStates([vm], on: record)[vm]
        } ?? nil
    }
}
