import Foundation
import VCCatalog
import VCModel

/// A node taking its seat in the cluster (`vcnode join`, `vcnode replace OLD`), run by the
/// vcd of the joining node itself: it starts that node's etcd member.
extension NodeDrain {
    /// How long a new learner has to catch up with the leader before the join gives up and
    /// takes it out again.
    static let catchUpPatience: Duration = .seconds(60)

    /// Gives this node a voting etcd member when the cluster has fewer than three healthy
    /// ones (`EtcdSeat`): added as a learner, started here, promoted once caught up; with
    /// `replacing`, that node is removed first (`vcnode remove`'s rules). Refused in one
    /// line with nothing changed; a learner that does not catch up is removed again, and
    /// its data with it. Run again, it finishes what an interrupted run left.
    func join(replacing old: String?) async throws(DaemonError) -> AsyncStream<OperationEvent> {
        let name = node.name
        let seat: EtcdSeat.Decision
        var removed: NodeRemovedResponse?
        let peerURL: String
        let clientURL: String
        do {
            guard let address = node.configuration.network.underlay else {
                throw DaemonError.invalid(
                    "node \(name) has no underlay address (network.underlay in vcd.yaml): an etcd member needs one")
            }
            peerURL = "http://\(address):2380"
            clientURL = "http://\(address):2379"
            if let old {
                try NameRule.checkNode(old)
                guard old != name else {
                    throw DaemonError.invalid(
                        "node \(name) cannot replace itself: run 'vcnode replace' on the new node")
                }
            }
            try await registered()
            let listed = try await node.catalog.etcd.members()
            let members = await Self.health(of: listed, node: name, underlay: address)
            var gone = false
            if let old {
                gone = try await node.catalog.etcd.get(node.catalog.removedKey(old)) != nil
                // OLD's own refusal (alive and not drained, …) comes first.
                if !gone { _ = try await removal(old, verb: "replace") }
            }
            // Decided as if OLD were gone already, so that a refusal changes nothing.
            var oldMember: UInt64?
            if let old {
                let underlay = try await node.catalog.members().first { $0.name == old }?.underlay
                oldMember = await Self.health(of: listed, node: old, underlay: underlay).first { $0.name == old }?.id
            }
            switch EtcdSeat.decide(node: name, members: members.filter { $0.id != oldMember }) {
            case .success(let d): seat = d
            case .failure(let refusal):
                throw DaemonError.conflict("cannot \(old.map { "replace \($0)" } ?? "join") here: \(refusal.reason)")
            }
            if let old, !gone { removed = try await remove(old, verb: "replace") }
        } catch {
            throw DaemonError.from(error)
        }
        let (stream, events) = AsyncStream<OperationEvent>.makeStream()
        let removal = removed
        let started = node.operations.start {
            if let removed = removal { events.yield(.step(removed.message)) }
            events.yield(await seatEvent(seat, peerURL: peerURL, clientURL: clientURL, events: events))
            events.finish()
        }
        guard started else { throw .unavailable(ClusterLifecycle.stoppingMessage) }
        return stream
    }

    /// A node joins under a registration of its own: refused while another machine's vcd
    /// holds its name, or while it holds no lease yet.
    private func registered() async throws {
        if await node.lease.id != nil { return }
        if let held = try await node.catalog.heldByAnotherMachine(node.name, machine: node.machine) {
            throw CatalogError.nameInUse(node: node.name, api: held.api)
        }
        throw CatalogError.unregistered(node: node.name)
    }

    private func seatEvent(
        _ seat: EtcdSeat.Decision, peerURL: String, clientURL: String,
        events: AsyncStream<OperationEvent>.Continuation
    ) async -> OperationEvent {
        let name = node.name
        do {
            switch seat {
            case .voting(let voters):
                return OperationEvent(
                    kind: .done, message: "node \(name) is a voting etcd member already (\(voters) voting members)")
            case .notNeeded(let voters):
                return OperationEvent(
                    kind: .done,
                    message: "node \(name) joined as a client of etcd: \(voters) healthy voting members, none needed")
            case .learner(let id):
                events.yield(.step("\(name) is an etcd learner already (an earlier join stopped midway)"))
                try await takeSeat(id, peerURL: peerURL, clientURL: clientURL, added: nil, events: events)
            case .add(let voters):
                events.yield(.step("etcd has \(voters) voting member(s): adding \(name) as a learner at \(peerURL)"))
                let added: (EtcdClient.Member, [EtcdClient.Member])
                do {
                    added = try await node.catalog.etcd.addMember(peerURLs: [peerURL])
                } catch {
                    // The reply may be lost with the addition made: the list tells.
                    guard let mine = try? await node.catalog.etcd.members(),
                        let own = mine.first(where: { $0.peerURLs.contains(peerURL) })
                    else { throw error }
                    added = (own, mine)
                }
                try await takeSeat(added.0.id, peerURL: peerURL, clientURL: clientURL, added: added.1, events: events)
            }
            let members = try await node.catalog.etcd.members()
            node.catalog.etcd.follow(members: members)
            let voters = members.filter { !$0.isLearner }.map(\.name).sorted()
            node.logger.notice("etcd member promoted", metadata: ["node": "\(name)"])
            return OperationEvent(
                kind: .done,
                message:
                    "node \(name) is a voting etcd member: \(voters.count) voting members (\(voters.joined(separator: ", ")))"
            )
        } catch {
            return OperationEvent(kind: .failed, error: DaemonError.from(error).apiError)
        }
    }

    /// Starts this node's member `id` (a learner) and promotes it once caught up; removes
    /// it again, data and all, when it cannot be. `added`: the member list right after
    /// the addition (nil: the learner was there before, and its definition is on disk or
    /// made from the list now).
    private func takeSeat(
        _ id: UInt64, peerURL: String, clientURL: String, added: [EtcdClient.Member]?,
        events: AsyncStream<OperationEvent>.Continuation
    ) async throws(DaemonError) {
        let name = node.name
        let process = EtcdMemberProcess(configuration: node.configuration, logger: node.logger)
        do {
            var definition = process.definition()
            if definition == nil || added != nil {
                var list = added ?? []
                if added == nil { list = try await node.catalog.etcd.members() }
                definition = EtcdMemberProcess.Definition(
                    name: name, peerURL: peerURL, clientURL: clientURL,
                    initialCluster: EtcdSeat.initialCluster(
                        node: name, peerURL: peerURL, members: list.map { ($0.name, $0.peerURLs) }))
            }
            // A member just added starts empty: data left by an earlier member of this node
            // (removed since) would make etcd refuse to start.
            if added != nil { await process.remove() }
            try await process.start(definition!)
            events.yield(.step("started etcd on \(name) (clients at \(clientURL)); waiting for it to catch up"))
            let began = ContinuousClock.now
            var last = ""
            while true {
                do {
                    try await node.catalog.etcd.promoteMember(id)
                    break
                } catch {
                    last = "\(error)"
                }
                guard ContinuousClock.now - began < Self.catchUpPatience else {
                    throw DaemonError.failed(
                        "etcd on \(name) did not catch up within \(Self.catchUpPatience) (\(last)); see \(process.logFile)"
                    )
                }
                try await Task.sleep(for: .milliseconds(500))
            }
            events.yield(.step("\(name) caught up in \(Self.seconds(ContinuousClock.now - began)) s and was promoted"))
        } catch {
            // Out again, so that the cluster keeps the members it had: etcd allows one
            // learner at a time, and a removed member's data can never be used again.
            node.logger.warning("etcd join failed, removing the learner", metadata: ["error": "\(error)"])
            let failure = DaemonError.from(error)
            do {
                try await RetryPolicy.catalogWrite.run { () async throws(CatalogError) in
                    try await node.catalog.etcd.removeMember(id)
                }
            } catch let removal {
                // Still listed: its data stays, so that the next join can finish it.
                throw DaemonError.failed(
                    "\(failure); the learner could not be removed (\(removal)): run 'vcnode join' to finish it")
            }
            await process.remove()
            throw DaemonError.failed("\(failure); the learner was removed again, run 'vcnode join' to retry")
        }
    }

    static func seconds(_ d: Duration) -> String {
        String(format: "%.1f", Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18)
    }
}
