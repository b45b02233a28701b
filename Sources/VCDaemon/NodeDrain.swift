import Foundation
import VCCatalog
import VCModel

/// Cordoning and draining a node, for the technician who is about to take it out
/// (`vcnode cordon`, `uncordon`, `drain`). Any node's vcd does it for any node.
struct NodeDrain: Sendable {
    let node: PeerNode
    let lifecycle: ClusterLifecycle

    /// The reason a drain gives its cordon.
    static let drainReason = "draining"

    /// How long a drain waits for an operation that holds one of the node's clusters.
    static let busyPatience = Duration.seconds(60)

    func cordon(_ name: String, reason: String?) async throws(DaemonError) -> NodeSummary {
        do {
            try await known(name)
            let why = reason.flatMap { $0.isEmpty ? nil : $0 } ?? "cordoned by the technician"
            try await node.catalog.cordon(name, reason: why)
            node.logger.notice("node cordoned", metadata: ["node": "\(name)", "reason": "\(why)"])
            return try await summary(name)
        } catch {
            throw DaemonError.from(error)
        }
    }

    func uncordon(_ name: String) async throws(DaemonError) -> NodeSummary {
        do {
            try await known(name)
            try await node.catalog.uncordon(name)
            node.logger.notice("node uncordoned", metadata: ["node": "\(name)"])
            return try await summary(name)
        } catch {
            throw DaemonError.from(error)
        }
    }

    /// Cordons `name` and moves every VM placed there to other nodes while it runs
    /// (`DrainPlan`), one cluster after another, with a progress line per step. Refused,
    /// with nothing changed, when a cluster's VMs fit nowhere else (unless `force`, which
    /// suspends that cluster) or a cluster is failed or busy longer than `busyPatience`.
    func drain(_ name: String, force: Bool) async throws(DaemonError) -> AsyncStream<OperationEvent> {
        let actions: [DrainPlan.Action]
        var cordonedHere = false
        do {
            try await known(name)
            if try await node.catalog.cordons()[name] == nil {
                try await node.catalog.cordon(name, reason: Self.drainReason)
                cordonedHere = true
            }
            actions = try await plan(name, force: force)
        } catch {
            // Refused: the node is as it was.
            if cordonedHere { try? await node.catalog.uncordon(name) }
            throw DaemonError.from(error)
        }
        let (stream, events) = AsyncStream<OperationEvent>.makeStream()
        let started = node.operations.start {
            await run(actions, draining: name, events: events)
            events.finish()
        }
        guard started else { throw .unavailable(ClusterLifecycle.stoppingMessage) }
        return stream
    }

    private func plan(_ name: String, force: Bool) async throws -> [DrainPlan.Action] {
        let deadline = ContinuousClock.now + Self.busyPatience
        while true {
            let world = try await PlacementWorld.read(node)
            async let clusters = node.catalog.clusters()
            async let operations = node.catalog.operations()
            let busy = Set(try await operations.map(\.cluster))
            switch DrainPlan.plan(
                node: name, clusters: try await clusters.map(\.value), nodes: world.views(excluding: nil), busy: busy,
                force: force)
            {
            case .success(let actions):
                return actions
            case .failure(let refusal):
                // An operation in progress ends by itself; anything else is the caller's to fix.
                guard busy.contains(refusal.cluster), ContinuousClock.now < deadline else {
                    throw DaemonError.conflict("cannot drain \(name): \(refusal.reason)")
                }
                try await Task.sleep(for: .milliseconds(500))
            }
        }
    }

    private func run(
        _ actions: [DrainPlan.Action], draining name: String, events: AsyncStream<OperationEvent>.Continuation
    ) async {
        var live = 0
        var saved = 0
        var suspended: [String] = []
        var failures: [String] = []
        events.yield(.step("cordoned \(name); \(Self.describe(actions))"))
        for action in actions {
            switch action {
            case .migrate(let cluster, let vms):
                events.yield(.step("\(cluster): moving \(vms.joined(separator: ", ")) off \(name)"))
                do {
                    for await event in try await lifecycle.migrate(cluster, vms: vms) {
                        switch event.kind {
                        case .step, .progress:
                            let line = event.message ?? ""
                            if line.hasPrefix("migrate ") {
                                if line.contains(": live to ") {
                                    live += 1
                                } else if line.contains("suspended it") {
                                    saved += 1
                                }
                                events.yield(.step("\(cluster): \(line)"))
                            }
                        case .done:
                            events.yield(.step("\(cluster): \(event.message ?? "moved")"))
                        case .failed:
                            let why = event.error?.message ?? "failed"
                            failures.append("\(cluster): \(why)")
                            events.yield(.step("\(cluster): \(why)"))
                        }
                    }
                } catch {
                    failures.append("\(cluster): \(error)")
                    events.yield(.step("\(cluster): \(error)"))
                }
            case .suspend(let cluster, let reason):
                events.yield(.step("\(cluster): suspending it (--force): \(reason)"))
                do {
                    for await event in try await lifecycle.suspend(cluster) where event.kind == .failed {
                        failures.append("\(cluster): \(event.error?.message ?? "suspend failed")")
                    }
                    suspended.append(cluster)
                } catch {
                    failures.append("\(cluster): \(error)")
                }
            }
        }
        if !failures.isEmpty {
            events.yield(
                OperationEvent(
                    kind: .failed,
                    error: APIError(
                        code: "failed",
                        message:
                            "drain of \(name) incomplete: \(failures.joined(separator: "; ")); it stays cordoned, run drain again"
                    )))
            return
        }
        var moved = ["\(live) VM(s) moved live"]
        if saved > 0 { moved.append("\(saved) by suspend and resume (live migration failed)") }
        if !suspended.isEmpty { moved.append("cluster(s) \(suspended.joined(separator: ", ")) suspended") }
        node.logger.notice("node drained", metadata: ["node": "\(name)", "live": "\(live)", "saved": "\(saved)"])
        events.yield(
            OperationEvent(
                kind: .done,
                message:
                    "node \(name) is drained: \(moved.joined(separator: ", ")); it stays cordoned ('vcnode uncordon \(name)' opens it again)"
            ))
    }

    static func describe(_ actions: [DrainPlan.Action]) -> String {
        let moves = actions.reduce(0) { n, a in if case .migrate(_, let vms) = a { n + vms.count } else { n } }
        let suspends = actions.filter { if case .suspend = $0 { true } else { false } }.count
        guard moves + suspends > 0 else { return "no running VM is placed there" }
        return "\(moves) VM(s) to move" + (suspends > 0 ? ", \(suspends) cluster(s) to suspend" : "")
    }

    private func known(_ name: String) async throws {
        try NameRule.checkNode(name)
        guard try await node.catalog.members().contains(where: { $0.name == name }) else {
            throw DaemonError.notFound("no node named '\(name)'; 'vc node list' shows the nodes")
        }
    }

    private func summary(_ name: String) async throws -> NodeSummary {
        guard let found = try await APIRoutes.summaries(node).first(where: { $0.record.name == name }) else {
            throw DaemonError.notFound("no node named '\(name)'")
        }
        return found
    }
}
