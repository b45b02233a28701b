import Foundation
import VCCatalog
import VCModel

/// Taking a drained or dead node out of the cluster (`vcnode remove`), from any node.
extension NodeDrain {
    /// Removes `name`: its etcd member first when it has one, then its records, leaving a
    /// mark that keeps its vcd from registering again. Refused, with nothing changed, as
    /// `NodeRemoval` says. A retry after a failure midway (the member gone, the records
    /// not) finds no member and finishes.
    func remove(_ name: String, verb: String = "remove") async throws(DaemonError) -> NodeRemovedResponse {
        do {
            let (plan, world) = try await removal(name, verb: verb)
            // Read once, before the member goes (etcd may elect a leader after that), and
            // not again: a retry after a lost reply finds the registration gone already.
            let lease = try await node.catalog.registrationLease(name)
            if let member = plan.member {
                // etcd refuses a removal ("unhealthy cluster") until the members left have
                // been connected for 5 s (its HealthInterval), as right after a start.
                try await RetryPolicy.catalogWrite.run { () async throws(CatalogError) in
                    try await node.catalog.etcd.removeMember(member.id)
                }
                node.logger.notice("etcd member removed", metadata: ["node": "\(name)", "member": "\(member.id)"])
            }
            // Right after a member is removed, the others may be electing a leader.
            let removed = try await RetryPolicy.catalogWrite.run { () async throws(CatalogError) -> Bool in
                try await node.catalog.remove(
                    node: name, commitmentRevision: world.commitments[name]?.modRevision, lease: lease, by: node.name)
            }
            guard removed else {
                let done = plan.member == nil ? "" : " (its etcd member is removed already)"
                throw DaemonError.conflict(
                    "cannot remove \(name): it changed meanwhile (VMs placed, registered again or uncordoned)\(done); "
                        + "run 'vcnode remove \(name)' again")
            }
            node.logger.notice("node removed", metadata: ["node": "\(name)"])
            let etcd =
                plan.member == nil
                ? "it had no etcd member"
                : "its etcd member too; \(plan.healthyVotersLeft) of \(plan.votersLeft) etcd voting members healthy"
            return NodeRemovedResponse(
                node: name, etcdMember: plan.member?.name, etcdVoters: plan.votersLeft,
                etcdHealthyVoters: plan.healthyVotersLeft, message: "node \(name) removed (\(etcd))")
        } catch {
            throw DaemonError.from(error)
        }
    }

    /// What removing `name` takes (`NodeRemoval`), or its refusal, with the world it was
    /// decided on; changes nothing.
    func removal(_ name: String, verb: String) async throws -> (NodeRemoval.Plan, PlacementWorld) {
        try NameRule.checkNode(name)
        let world = try await PlacementWorld.read(node)
        let known = Set(world.members.map(\.name)).union(world.live.keys)
        let operations = try await node.catalog.operations()
        let record = world.live[name] ?? world.members.first { $0.name == name }
        let underlay = record?.underlay
        let storage = record?.roles.contains(.storage) ?? false
        let images = storage ? try await node.catalog.images().map(\.name) : []
        let listed = try await node.catalog.etcd.members()
        let members = await Self.health(of: listed, node: name, underlay: underlay)
        // A member serving the node's address under another name or URL would be left
        // voting: the configured endpoints say it is a member, the list must show it.
        if let underlay, node.configuration.etcd.memberHosts.contains(underlay),
            !members.contains(where: { $0.name == name })
        {
            throw DaemonError.conflict(
                "cannot \(verb) \(name): the etcd endpoints name \(underlay) but no etcd member is named \(name) or "
                    + "serves there (\(listed.map(\.name).joined(separator: ", "))); remove its member with "
                    + "etcdctl member remove first")
        }
        let decision = NodeRemoval.plan(
            node: name, state: known.contains(name) ? world.state(of: name) : nil, known: Array(known),
            clusters: world.clusters, busy: Set(operations.map(\.cluster)),
            coordinating: operations.filter { $0.node == name }.map(\.cluster),
            migratingFrom: operations.filter { ($0.origins ?? [:]).values.contains { $0.node == name } }
                .map(\.cluster),
            members: members,
            storage: storage, images: images)
        switch decision {
        case .success(let plan): return (plan, world)
        case .failure(let refusal) where !known.contains(name): throw DaemonError.notFound(refusal.reason)
        case .failure(let refusal): throw DaemonError.conflict("cannot \(verb) \(name): \(refusal.reason)")
        }
    }

    /// Each member with whether it answers now (1 s each, all at once). The node's own
    /// member is the one with its name, or one serving clients on its underlay address.
    static func health(of members: [EtcdClient.Member], node: String, underlay: String?) async -> [NodeRemoval.Member] {
        await withTaskGroup(of: NodeRemoval.Member.self) { group in
            for m in members {
                group.addTask {
                    // A member added but not started yet has no name and no client URL.
                    let own = m.name == node || (underlay.map(m.hosts.contains) ?? false)
                    var healthy = false
                    if let url = m.clientURLs.first {
                        healthy = await EtcdClient(endpoint: url, timeout: .seconds(1)).answersStatus()
                    }
                    return NodeRemoval.Member(
                        id: m.id, name: own ? node : (m.name.isEmpty ? String(m.id, radix: 16) : m.name),
                        isLearner: m.isLearner, healthy: healthy)
                }
            }
            return await group.reduce(into: []) { $0.append($1) }.sorted { $0.name < $1.name }
        }
    }
}
