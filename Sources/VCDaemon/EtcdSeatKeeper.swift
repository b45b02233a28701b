import Foundation
import VCCatalog
import VCModel

/// The cluster keeps three etcd voting members on healthy nodes by itself: each reconcile
/// pass, a node that is no member asks `EtcdSeatKeeping` whether it is the one to take a
/// seat (a voter's node dead past `etcd.replaceDeadMemberAfterSeconds`, or fewer voters
/// than three); if so, it removes the dead member and joins as `vcnode join` does. While
/// every seat is taken, a pass costs only the members' status requests.
struct EtcdSeatKeeper: Sendable {
    let node: PeerNode
    let drains: NodeDrain
    /// Since when each dead node has been seen dead by this vcd (kept across passes).
    let deaths: DeathClock

    /// `listed`: etcd's members, as this pass read them.
    func pass(listed: [EtcdClient.Member]) async {
        let after = node.configuration.etcd.replaceDeadMemberAfterSeconds
        guard after > 0, let address = node.configuration.network.underlay, await node.lease.id != nil else { return }
        let healthy = await NodeDrain.health(of: listed, node: node.name, underlay: address)
        guard EtcdSeatKeeping.needsSeat(node: node.name, members: healthy) else {
            // Every seat taken: a node that dies later is counted from then.
            _ = await deaths.seen(dead: [])
            return
        }
        do {
            let world = try await PlacementWorld.read(node)
            let records = Dictionary(
                (world.members + world.live.values).map { ($0.name, $0) }, uniquingKeysWith: { _, live in live })
            let views = world.views(excluding: nil)
            let dead = await deaths.seen(dead: Set(views.filter { $0.state == .dead }.map(\.name)))
            let members = healthy.map { m in
                var m = m
                m.name = Self.nodeName(of: m.id, listed: listed, records: records.values) ?? m.name
                return m
            }
            let nodes = views.map { view in
                EtcdSeatKeeping.Candidate(
                    name: view.name, state: view.state, roles: view.roles,
                    hasUnderlay: records[view.name]?.underlay != nil)
            }
            guard
                let step = EtcdSeatKeeping.step(
                    node: node.name, members: members, nodes: nodes, deadFor: dead, grace: .seconds(after))
            else { return }
            if case .replace(let gone, let id) = step {
                node.logger.notice(
                    "etcd voting member of a dead node removed; this node takes its seat",
                    metadata: ["dead": "\(gone)", "deadFor": "\(dead[gone] ?? .zero)"])
                try await RetryPolicy.catalogWrite.run { () async throws(CatalogError) in
                    try await node.catalog.etcd.removeMember(id)
                }
            } else {
                node.logger.notice("fewer than three etcd voting members: this node takes a seat")
            }
            for await event in try await drains.join(replacing: nil) {
                switch event.kind {
                case .failed:
                    node.logger.error(
                        "taking an etcd seat failed", metadata: ["error": "\(event.error?.message ?? "")"])
                case .done: node.logger.notice("\(event.message ?? "")")
                default: node.logger.info("\(event.message ?? "")")
                }
            }
        } catch {
            if !Task.isCancelled {
                node.logger.warning("cannot keep etcd's voting members", metadata: ["error": "\(error)"])
            }
        }
    }

    /// The node whose underlay address serves the member `id` (founding members are named
    /// by the machine's etcd service, not necessarily after their node).
    static func nodeName(of id: UInt64, listed: [EtcdClient.Member], records: some Sequence<NodeRecord>) -> String? {
        guard let hosts = listed.first(where: { $0.id == id })?.hosts else { return nil }
        return records.first { $0.underlay.map(hosts.contains) ?? false }?.name
    }
}

/// When this vcd first saw each node dead; a node seen alive again is forgotten.
actor DeathClock {
    private var since: [String: ContinuousClock.Instant] = [:]

    func seen(dead: Set<String>, now: ContinuousClock.Instant = .now) -> [String: Duration] {
        since = since.filter { dead.contains($0.key) }
        for name in dead where since[name] == nil { since[name] = now }
        return since.mapValues { now - $0 }
    }
}
