import Foundation
import Logging
import ServiceLifecycle
import VCCatalog
import VCModel
import VCNetwork
import VCStorage

/// Makes this node's share of the world match the catalog. Each pass first finishes or
/// undoes the operations that nothing runs any more (this node's from a previous vcd or a
/// failed last catalog write, and those of nodes without a lease), then carries out the
/// repairs of the pure `NodePlan`: what a restart of the host, tgtd or dnsmasq loses is
/// made again, and what is placed nowhere is removed. Last, the gateway addresses of the
/// networks it serves are settled (`GatewayAddresses`). A pass runs at start and every
/// `reconcileIntervalSeconds`.
public struct Reconciler: Service, CustomStringConvertible {
    public var description: String { "Reconciler" }
    let node: PeerNode
    let lifecycle: ClusterLifecycle
    let images: ImageLibrary
    /// Since when each dead node has been seen dead (`EtcdSeatKeeper`).
    private let deaths = DeathClock()
    /// How long the first pass waits for the node's first registration to be answered.
    static let firstRegistrationWait = Duration.seconds(15)
    public func run() async throws {
        await withDiscardingTaskGroup { group in
            // Beside the passes, on its own faster clock: a dead node's VMs are back
            // elsewhere within seconds, not at the next pass.
            group.addTask { await NodeLossRecovery(node: node, lifecycle: lifecycle).run() }
            await passes()
            group.cancelAll()
        }
    }

    private func passes() async {
        // The first pass waits for the node's first registration to be answered (a
        // moment, unless etcd cannot be reached): before it, another machine may hold
        // this node's name, and its VMs and operations are not this vcd's to repair.
        let asked = ContinuousClock.now
        while await node.lease.nameTaken == nil, ContinuousClock.now - asked < Self.firstRegistrationWait,
            !Task.isShuttingDownGracefully, !Task.isCancelled
        {
            try? await Task.sleep(for: .milliseconds(100))
        }
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
        let members = await followEtcdMembers()
        // A second machine given a live node's name repairs nothing of that node's.
        switch await node.lease.nameTaken {
        case true?:
            node.logger.warning("reconcile skipped: another machine holds this node's name")
            return
        case nil:
            node.logger.warning("reconcile skipped: this node has not registered yet (is etcd reachable?)")
            return
        case false?:
            break
        }
        await recoverOperations()
        await reconcile()
        // Last: a seat taken waits for the new member to catch up.
        if let members {
            await EtcdSeatKeeper(node: node, drains: NodeDrain(node: node, lifecycle: lifecycle), deaths: deaths)
                .pass(listed: members)
        }
    }

    /// The etcd members as etcd lists them now, so that a member a join added is used and
    /// one a removal took out is not (the configured endpoints are where vcd starts).
    /// Returns the list (nil when it cannot be read).
    @discardableResult
    func followEtcdMembers() async -> [EtcdClient.Member]? {
        guard let members = try? await node.catalog.etcd.members() else { return nil }
        let etcd = node.catalog.etcd
        if etcd.follow(members: members) {
            node.logger.notice(
                "following etcd's members", metadata: ["endpoints": "\(etcd.endpoints.joined(separator: ", "))"])
        }
        return members
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
        case .recover:
            // Placed already (the journal entry was written with the placement): its steps
            // are made sure of again.
            await lifecycle.runTransition(
                cluster, operation: operation, plan: .recover(cluster, vms: operation.vms ?? []), to: .running,
                events: events)
        case .migrate:
            // Settled from where each VM runs now; never started twice.
            await lifecycle.settleMigration(cluster, operation: operation, reason: nil, events: events)
        }
    }

    /// One pass of this node's share of the world: what the catalog wants (`DesiredWorld`)
    /// and what the node holds in Peerless's name spaces (`ObservedNode`) go into the pure
    /// `NodePlan`, and its repairs are carried out in its order. A repair of a cluster runs
    /// under the cluster's lock, after checking no operation holds it meanwhile.
    func reconcile() async {
        // The node is observed before the catalog is read: whatever an operation made
        // before the observation, its cluster is in the catalog read after it.
        let desired: DesiredWorld
        var observed: ObservedNode
        let tables: Set<String>
        do {
            (observed, tables) = try await observe()
            desired = try await desiredWorld()
        } catch {
            if !Task.isCancelled {
                node.logger.warning("reconcile skipped", metadata: ["error": "\(DaemonError.from(error))"])
            }
            return
        }
        for cluster in desired.clusters where cluster.vms.contains(where: { $0.node == node.name }) {
            let runner = StepRunner(node: node, cluster: cluster, image: nil)
            if runner.firewall.isCurrent(tables: tables) { observed.currentFirewalls.insert(cluster.network.bridge) }
        }
        let repairs = NodePlan.plan(desired: desired, observed: observed)
        // A removal must still hold against a fresh catalog: an operation that began
        // since the first read (a resume that placed a VM here) keeps what it made.
        var removable: Set<Repair> = []
        if repairs.contains(where: { $0.cluster == nil }), let fresh = try? await desiredWorld() {
            removable = Set(NodePlan.plan(desired: fresh, observed: observed).filter { $0.cluster == nil })
        }
        for repair in repairs {
            guard !Task.isCancelled else { return }
            if repair.cluster == nil && !removable.contains(repair) { continue }
            if let name = repair.cluster, await !node.locks.tryLock(name, as: .repair) { continue }
            do {
                node.logger.notice("repair", metadata: ["repair": "\(repair)"])
                try await apply(repair)
            } catch {
                node.logger.warning(
                    "repair failed", metadata: ["repair": "\(repair)", "error": "\(DaemonError.from(error))"])
            }
            if let name = repair.cluster { await node.locks.unlock(name) }
        }
        guard !Task.isCancelled else { return }
        // The bridges as observed: one the repairs removed is seen missing when settled.
        await GatewayAddresses(node: node).settleAll(desired, bridges: observed.bridges)
    }

    private func desiredWorld() async throws -> DesiredWorld {
        async let clusters = node.catalog.clusters()
        async let operations = node.catalog.operations()
        async let withSecrets = node.catalog.clustersWithSecrets()
        async let live = node.catalog.nodes()
        async let fenced = node.catalog.fenced()
        var underlays: [String: String] = [:]
        for record in try await live { if let u = record.underlay { underlays[record.name] = u } }
        return DesiredWorld(
            node: node.name, roles: node.configuration.roles, bridgePrefix: node.addresses.bridgePrefix,
            clusters: try await clusters.map(\.value), busy: Set(try await operations.map(\.cluster)),
            underlays: underlays, withSecrets: try await withSecrets, poolRoot: node.pool.root,
            fenced: NodeLoss.names(try await fenced))
    }

    /// Lists what this node holds: domains (compute), targets (storage), bridges, VXLAN
    /// links, nftables tables and dnsmasqs in Peerless's name spaces.
    private func observe() async throws -> (ObservedNode, Set<String>) {
        var observed = ObservedNode()
        if node.has(.compute) {
            observed.domains = try await node.hypervisor.run { conn in
                try conn.allDomains().compactMap { d -> ObservedNode.Domain? in
                    guard let meta = d.metadata(namespace: DomainDocument.metadataNamespace),
                        let cluster = Self.attribute("cluster", in: meta)
                    else { return nil }
                    let xml = (try? d.xmlDescription()) ?? ""
                    return ObservedNode.Domain(
                        name: d.name, cluster: cluster, active: d.isActive, paused: (try? d.state()) == .paused,
                        initiator: Self.attribute("name", in: xml, after: "<iqn "))
                }
            }
        }
        if node.has(.storage) {
            observed.targets = try await node.disks.openDisks()
        }
        let prefix = node.addresses.bridgePrefix
        observed.bridges = Set(await ClusterBridge.subnetsInUseOnHost(bridgePrefix: prefix).map { "\(prefix)\($0)" })
        for name in await ClusterOverlay.linksOnHost(bridgePrefix: prefix) {
            let link = ClusterOverlay(
                network: Self.network(bridge: String(name.dropLast())), local: "", peers: [], logger: node.logger)
            observed.overlays.append(
                ObservedNode.Overlay(
                    name: name, vni: await link.vni() ?? 0, peers: (try? await link.floodPeers()) ?? []))
        }
        let tables = try await ClusterFirewall.loadedTables()
        observed.firewallTables = Set(
            tables.compactMap { $0.split(separator: " ").last.map(String.init) }.filter { $0.hasPrefix("peerless_") })
        let files = (try? FileManager.default.contentsOfDirectory(atPath: node.networkDirectory)) ?? []
        observed.dhcpFiles = Set(
            files.compactMap { f -> String? in
                let bridge = String(f.split(separator: ".").first ?? "")
                return bridge.hasPrefix(prefix) && f != bridge ? bridge : nil
            })
        for bridge in observed.bridges {
            let server = DHCPServer(
                table: DHCPTable(network: Self.network(bridge: bridge), vms: [], runDirectory: node.networkDirectory),
                logger: node.logger)
            if server.runningPID() != nil { observed.dhcp.insert(bridge) }
        }
        return (observed, tables)
    }

    private func apply(_ repair: Repair) async throws {
        switch repair {
        case .perform(let name, let step):
            // Re-read under the lock: an operation may have begun since the plan was made.
            guard try await node.catalog.operation(name) == nil, let cluster = try await node.catalog.cluster(name)
            else { return }
            try await StepRunner(node: node, cluster: cluster.value, image: nil).performHere(step)
        case .close(let name):
            guard let cluster = try await node.catalog.cluster(name) else { return }
            try await close(cluster)
        case .removeDomain(let name):
            try await node.hypervisor.run { conn in
                guard let d = try conn.domain(named: name),
                    d.metadata(namespace: DomainDocument.metadataNamespace) != nil
                else { return }
                if d.isActive { try d.destroy() }
                try d.undefine()
            }
        case .removeTarget(let iqn):
            let vm = String(iqn.dropFirst("\(Naming.iqnPrefix):disk.".count))
            try await node.disks.close(iqn: iqn, account: Naming.chapUser(vm: vm))
        case .removeBridge(let name):
            try await ClusterBridge(network: Self.network(bridge: name), logger: node.logger).remove()
        case .removeOverlay(let name):
            try await ClusterOverlay(
                network: Self.network(bridge: String(name.dropLast())), local: "", peers: [], logger: node.logger
            ).remove()
        case .removeFirewall(let bridge):
            try await ClusterFirewall(
                boundary: GuestBoundary(network: Self.network(bridge: bridge), vms: []),
                runDirectory: node.networkDirectory, logger: node.logger
            ).remove()
        case .stopDHCP(let bridge):
            await DHCPServer(
                table: DHCPTable(network: Self.network(bridge: bridge), vms: [], runDirectory: node.networkDirectory),
                logger: node.logger
            ).remove()
        }
    }

    /// A network known only by its bridge's name: enough to remove what is named after it.
    static func network(bridge: String) -> ClusterNetwork {
        ClusterNetwork(subnet: 0, bridge: bridge, cidr: "", gateway: "", prefixLength: 24, domain: "")
    }

    /// The value of `name='…'` (or `"…"`) in `text`, after `after` when given.
    static func attribute(_ name: String, in text: String, after: String? = nil) -> String? {
        var rest = Substring(text)
        if let after {
            guard let r = rest.range(of: after) else { return nil }
            rest = rest[r.upperBound...]
        }
        for quote in ["'", "\""] {
            if let r = rest.range(of: "\(name)=\(quote)"),
                let end = rest[r.upperBound...].firstIndex(of: Character(quote))
            {
                return String(rest[r.upperBound..<end])
            }
        }
        return nil
    }

    /// A cluster made before every disk had its own CHAP secret: its disks were
    /// open to anyone with the node's initiator name. Never left so: its targets are
    /// removed and the cluster is marked failed with what to do.
    private func close(_ cluster: Versioned<VirtualCluster>) async throws {
        let message = StepRunner.noSecret(cluster.value.name)
        node.logger.error(
            "closing the disks of a cluster without CHAP secrets", metadata: ["cluster": "\(cluster.value.name)"])
        for vm in cluster.value.vms where vm.node == node.name {
            try await node.disks.close(iqn: vm.diskIQN, account: nil)
        }
        guard cluster.value.state != .failed || cluster.value.message != message else { return }
        var failed = cluster
        failed.value.state = .failed
        failed.value.message = message
        failed.value.updatedAt = node.now()
        try await node.catalog.update(failed)
    }
}
