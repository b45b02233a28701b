import Foundation
import Logging
import Synchronization
import VCCatalog
import VCModel

/// What a live node does about nodes whose lease is gone, every half second while it holds
/// its own lease (`NodeLoss` decides): it claims the fencing of each dead node in one etcd
/// transaction, has the storage node cut the dead node's incarnations off at tgtd and
/// records them fenced, then recovers every running cluster that had VMs there, as a
/// journaled operation of its own. A node without a lease does none of this: it may be the
/// one the others are about to fence.
struct NodeLossRecovery: Sendable {
    let node: PeerNode
    let lifecycle: ClusterLifecycle
    /// The lease each node's registration was last seen under, kept once it is gone.
    private let lastLeases = LastLeases()

    static let period = Duration.milliseconds(RecoveryBudget.pollMilliseconds)

    func run() async {
        var passes = 0
        while !Task.isCancelled {
            // Each tenth pass also looks for fenced incarnations still placed (a node that
            // came back before its VMs were recovered) when every node is up.
            await pass(thorough: passes % 10 == 0)
            passes &+= 1
            try? await Task.sleep(for: Self.period)
        }
    }

    func pass(thorough: Bool = true) async {
        guard let lease = await node.lease.id else { return }
        let plan: (fences: [NodeLoss.Fence], recoveries: [NodeLoss.Recovery])
        do {
            // Most passes end here: every node that ever registered holds its lease.
            async let live = node.catalog.registrationLeases()
            async let members = node.catalog.members()
            let leases = try await live
            lastLeases.remember(leases)
            let alive = Set(leases.keys)
            let registered = try await members
            await node.lease.seen(registered.filter { $0.name != node.name })
            let everyone = Set(registered.map(\.name))
            if everyone.isSubset(of: alive) && !thorough { return }
            let fenced = try await node.catalog.fenced()
            if everyone.isSubset(of: alive) && fenced.isEmpty { return }
            async let clusters = node.catalog.clusters()
            async let operations = node.catalog.operations()
            let journal = try await operations
            plan = NodeLoss.plan(
                clusters: try await clusters.map(\.value), live: alive, busy: Set(journal.map(\.cluster)),
                fenced: fenced, migrations: journal)
        } catch {
            return
        }
        // Side by side: each waits up to 3 s for its node's answer (`tellLost`).
        await withDiscardingTaskGroup { group in
            for fence in plan.fences { group.addTask { await self.fence(fence, lease: lease) } }
        }
        for recovery in plan.recoveries { await recover(recovery) }
    }

    private func fence(_ fence: NodeLoss.Fence, lease: Int64) async {
        var logger = node.logger
        logger[metadataKey: "dead-node"] = "\(fence.node)"
        do {
            guard try await node.catalog.claimFencing(fence.node, by: node.name, lease: lease) else { return }
            // Another node may have fenced them between this pass's read and the claim.
            if let done = try await node.catalog.fenced()[fence.node], done.initiators.isSuperset(of: fence.initiators)
            {
                try await node.catalog.dropFencing(fence.node, by: node.name)
                return
            }
        } catch {
            return
        }
        logger.warning(
            "node lost: fencing its incarnations at the storage", metadata: ["vms": "\(fence.initiators.count)"])
        let started = ContinuousClock.now
        // Told first, beside the fence: a node cut off from etcd alone still hears it and
        // stops its VMs. The fence is recorded (and the VMs start elsewhere) only once it
        // said so, or could not be reached, or took too long (`tellLost`).
        async let told = tellLost(fence.node)
        do {
            let storage = try await node.storageNode()
            if storage.name == node.name {
                try await node.disks.fence(initiators: Set(fence.initiators))
            } else {
                try await node.peers.fence(fence.initiators, on: storage)
            }
            switch await told {
            case .stopped(let count):
                logger.notice("the lost node stopped its VMs", metadata: ["stopped": "\(count)"])
            case .holdsALease:
                logger.warning("the lost node says it holds a lease; fenced all the same")
            case .notAsked:
                break
            case .noAnswer:
                logger.notice("the lost node did not answer", metadata: ["after": "\(ContinuousClock.now - started)"])
            }
            try await node.catalog.recordFenced(
                NodeLoss.Fenced(node: fence.node, initiators: Set(fence.initiators), by: node.name, at: node.now()))
            logger.notice("fenced", metadata: ["seconds": "\(ContinuousClock.now - started)"])
        } catch {
            logger.error("fencing failed; it is tried again", metadata: ["error": "\(DaemonError.from(error))"])
            try? await node.catalog.dropFencing(fence.node, by: node.name)
        }
    }

    /// What the lost node said when told (`tellLost`).
    private enum Told: Sendable {
        /// It stopped this many VMs.
        case stopped(Int)
        /// It holds a lease, or another one than named: it does not think itself lost.
        case holdsALease
        /// Never seen alive by this vcd: there is no lease to name it by.
        case notAsked
        /// Not reached, or no answer in time.
        case noAnswer
    }

    /// Tells a lost node so. A node that cannot be reached at all (dead, or cut off from
    /// everything) costs the connect timeout, ``PeerCalls/lostConnectTimeout``: it stops
    /// its VMs by itself when no other node answers it. One that is reached is waited for
    /// up to ``PeerCalls/lostAnswerBound``: it kills its QEMUs as the call arrives, and its
    /// VMs must be gone before they start elsewhere.
    private func tellLost(_ name: String) async -> Told {
        guard let lease = lastLeases.last(name) else { return .notAsked }
        let answer = await within(PeerCalls.lostAnswerBound) { () async -> LostAnswer? in
            // The record the last pass read, not a read of etcd (which may be electing).
            let witnesses = await node.lease.witnesses
            let known = witnesses.first { $0.name == name }
            let record: NodeRecord?
            if let known { record = known } else { record = try? await node.member(name) }
            guard let record else { return nil }
            return await node.peers.tellLost(record, lease: lease, by: node.name)
        }
        guard let answer else { return .noAnswer }
        return answer.stopped.map { .stopped($0) } ?? .holdsALease
    }

    private func recover(_ recovery: NodeLoss.Recovery) async {
        var logger = node.logger
        logger[metadataKey: "cluster"] = "\(recovery.cluster)"
        let events: AsyncStream<OperationEvent>
        do {
            events = try await lifecycle.recover(recovery.cluster, vms: recovery.vms)
        } catch {
            // Busy (another node began it first), or no room: said once per change.
            await note(recovery, "\(error)", logger: logger)
            return
        }
        logger.warning("recovering the VMs of a lost node", metadata: ["vms": "\(recovery.vms)"])
        for await event in events {
            if event.kind == .failed {
                logger.error("recovery failed", metadata: ["error": "\(event.error?.message ?? "-")"])
            } else if event.kind == .done {
                logger.notice("recovered", metadata: ["vms": "\(recovery.vms)"])
            }
        }
    }

    /// A recovery that cannot begin: the cluster is marked degraded with the reason (once),
    /// unless another node is simply running it.
    private func note(_ recovery: NodeLoss.Recovery, _ reason: String, logger: Logger) async {
        guard !reason.contains("busy") else { return }
        let message =
            "degraded: \(recovery.vms.joined(separator: ", ")) not running since their node was lost: \(reason)"
        do {
            guard var found = try await node.catalog.cluster(recovery.cluster), found.value.message != message else {
                return
            }
            found.value.message = message
            try await node.catalog.update(found)
            logger.warning("cluster degraded", metadata: ["reason": "\(reason)"])
        } catch {}
    }
}

/// The lease each node's registration was last seen under, across passes.
private final class LastLeases: Sendable {
    private let leases = Mutex<[String: Int64]>([:])

    func remember(_ seen: [String: Int64]) { leases.withLock { $0.merge(seen) { _, new in new } } }

    func last(_ node: String) -> Int64? { leases.withLock { $0[node] } }
}
