import Foundation
import Logging
import ServiceLifecycle
import Systemd
import VCCatalog
import VCModel
import VCNetwork

/// Tracks what must hold before systemd hears READY=1: the API listener is bound and the
/// node's lease is held.
public actor Readiness {
    private var listening = false
    private var leaseHeld = false
    private var announced = false
    /// When the lease's deadline watcher last went round its loop.
    private var beat: ContinuousClock.Instant?
    private let status: String

    public init(status: String) { self.status = status }

    public func listenerBound() {
        listening = true
        announce()
    }

    public func lease(held: Bool) {
        leaseHeld = held
        announce()
    }

    /// The watcher that takes the node's roles off and self-fences at the lease's
    /// deadline is alive.
    public func watcherBeat(at now: ContinuousClock.Instant = .now) { beat = now }

    /// What systemd's watchdog is told: ready once, and the deadline watcher went round
    /// within the last second. Not whether the lease is held: without etcd's quorum
    /// anywhere the VMs are to keep running (`SelfFence`), and the watchdog's kill would
    /// stop them.
    public var healthy: Bool {
        guard announced, let beat else { return false }
        return ContinuousClock.now - beat < .seconds(1)
    }

    private func announce() {
        guard listening, leaseHeld, !announced else { return }
        announced = true
        SystemdNotifier.ready(status: status)
    }
}

/// The id of the node lease this vcd holds, nil while it holds none. Keys that must die
/// with the node (its registration, the gateway addresses it holds) are written under it.
public actor HeldLease {
    public private(set) var id: Int64?
    /// Until when work under the lease may go on: a margin before the earliest instant it
    /// can have expired on etcd's side (the send time of the last renewal that succeeded
    /// plus its TTL).
    public private(set) var until: ContinuousClock.Instant?

    func set(_ id: Int64?) {
        self.id = id
        if id == nil { until = nil }
    }

    /// Another machine's vcd holds this node's name: this one acts as the node in nothing
    /// (no repair, no operation taken over) until it registers.
    public private(set) var nameTaken = false

    func name(taken: Bool) { nameTaken = taken }

    /// The last lease held, kept after it is dropped: what the other nodes are asked about
    /// when its deadline has passed.
    public private(set) var lastID: Int64?

    func held(_ id: Int64, until: ContinuousClock.Instant) {
        self.id = id
        self.until = until
        lastID = id
    }

    /// The other nodes that registered, as last read: asked, when this node's lease runs
    /// out, how long etcd still gives its lease (see `SelfFence`).
    public private(set) var witnesses: [NodeRecord] = []

    func seen(_ others: [NodeRecord]) { witnesses = others }

    /// Drops the lease if its time is up at `now`; true when it did.
    func expire(now: ContinuousClock.Instant) -> Bool {
        guard let until, now >= until else { return false }
        id = nil
        self.until = nil
        return true
    }
}

/// The node's registration in the catalog under an etcd lease, renewed at a third of its
/// TTL. Other nodes (and `vc node list`) see this node exactly as long as the lease lives.
public struct NodeLease: Service, CustomStringConvertible {
    public var description: String { "NodeLease" }
    let node: PeerNode
    let record: NodeRecord
    let readiness: Readiness

    /// Work under the lease stops this long before the lease can have expired.
    static let margin = Duration.seconds(1)

    /// The TTL asked of etcd, whole seconds (etcd's smallest at its default timers is 2).
    private var ttlSeconds: Int { max(node.configuration.leaseTTLSeconds, 2) }
    /// Between renewals that succeed: a third of the TTL, as `etcdctl lease keep-alive`.
    private var renewalPeriod: Duration { .seconds(ttlSeconds) / 3 }

    public func run() async throws {
        await withDiscardingTaskGroup { group in
            group.addTask { await watchDeadline() }
            await renew()
            group.cancelAll()
        }
    }

    private func renew() async {
        var lease: Int64?
        var removed = false
        let ttl = ttlSeconds
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            let sent = ContinuousClock.now
            var failed = false
            // A removed node asks for no lease again (a restarted vcd is refused again).
            if removed {
                try? await cancelWhenGracefulShutdown { try await Task.sleep(for: renewalPeriod) }
                continue
            }
            do {
                // A TTL etcd reports longer than the one asked (a leader change) is not
                // believed: the time left is counted from the send time.
                if let id = lease, case let left = try await node.catalog.etcd.keepAlive(lease: id), left > 0 {
                    await readiness.lease(held: true)
                    await node.lease.held(id, until: sent + .seconds(min(left, ttl)) - Self.margin)
                    // The registration must still be under it: a node removed while its
                    // lease was kept (the revoke lost) registers again at once, and is
                    // refused. A read that fails says nothing; the renewal stands.
                    if let registered = try? await node.catalog.registrationLease(record.name), registered != id {
                        lease = nil
                        continue
                    }
                } else {
                    await node.lease.set(nil)
                    if let id = lease { try? await node.catalog.etcd.revoke(lease: id) }
                    lease = nil
                    let granted = try await node.catalog.etcd.grantLease(ttlSeconds: ttl)
                    do {
                        try await node.catalog.register(record, lease: granted.id)
                    } catch {
                        try? await node.catalog.etcd.revoke(lease: granted.id)
                        throw error
                    }
                    lease = granted.id
                    await node.lease.name(taken: false)
                    node.logger.info("node registered", metadata: ["lease": "\(granted.id)", "ttl": "\(granted.ttl)"])
                    await readiness.lease(held: true)
                    await node.lease.held(granted.id, until: sent + .seconds(min(granted.ttl, ttl)) - Self.margin)
                }
            } catch let error as CatalogError where error.isNameInUse {
                // Another machine's vcd holds the name: said once, asked again each period
                // (when that machine is gone, its lease expires and the name is free).
                if await !node.lease.nameTaken { node.logger.error("\(error)") }
                await node.lease.name(taken: true)
                await readiness.lease(held: false)
                failed = false
            } catch CatalogError.removed {
                // Taken out (`vcnode remove`): it stays out, holding nothing, and says so once.
                node.logger.error(
                    "this node was removed from the cluster; it stays out",
                    metadata: ["error": "\(CatalogError.removed(node: record.name))"])
                (removed, lease) = (true, nil)
                await readiness.lease(held: false)
            } catch {
                if Task.isCancelled { break }
                // The lease is kept until its deadline (`watchDeadline` gives it up then):
                // one renewal lost to an etcd election takes nothing off.
                node.logger.warning("lease renewal failed", metadata: ["error": "\(error)"])
                await readiness.lease(held: false)
                failed = true
            }
            // After a failure, soon again (an etcd election ends within a second or two).
            let pause = failed ? LeaseMachine.Timers.defaultRetryDelay : renewalPeriod
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: pause) }
        }
        await node.lease.set(nil)
        if let lease { try? await node.catalog.etcd.revoke(lease: lease) }
    }

    /// A renewal that hangs (etcd cut off, each endpoint waited for) must not keep the
    /// gateway addresses past the instant another node may take them: at the lease's
    /// deadline they come off, whatever the renewal in flight answers later, and the
    /// node's VMs are stopped unless no other node can take them over (`SelfFence`).
    private func watchDeadline() async {
        var pending = false
        var said = ""
        var lastAsked: ContinuousClock.Instant?
        // Asked already while the renewal was late, so that a node cut off stops right at
        // its deadline instead of a question later.
        var early: (verdict: SelfFence.Verdict, at: ContinuousClock.Instant)?
        let lateWindow = max(.zero, .seconds(ttlSeconds) - Self.margin - renewalPeriod - .milliseconds(250))
        while !Task.isCancelled {
            await readiness.watcherBeat()
            if await node.lease.expire(now: .now) {
                await readiness.lease(held: false)
                // Only another node could take a gateway address over: a node that never
                // saw one keeps them (its guests keep DNS and DHCP on `.1`).
                if await !node.lease.witnesses.isEmpty {
                    node.logger.warning("lease not renewed in time: gateway addresses taken off")
                    await ClusterBridge.releaseGatewaysOnHost(plan: node.addresses, logger: node.logger)
                } else {
                    node.logger.warning("lease not renewed in time; no other node: gateway addresses kept")
                }
                (pending, said, lastAsked) = (true, "", nil)
            }
            let until = await node.lease.until
            let late = until.map { ContinuousClock.now >= $0 - lateWindow } ?? false
            if !pending && !late { early = nil }
            if pending, await node.lease.id != nil {
                pending = false
            } else if pending || late, lastAsked.map({ .now - $0 >= .milliseconds(250) }) ?? true {
                lastAsked = .now
                let verdict: SelfFence.Verdict
                if pending, let e = early, case .stop = e.verdict, ContinuousClock.now - e.at < .milliseconds(1500) {
                    verdict = e.verdict
                } else {
                    verdict = await selfFenceVerdict()
                    early = (verdict, .now)
                }
                guard pending else {
                    try? await Task.sleep(for: .milliseconds(100))
                    continue
                }
                switch verdict {
                case .stop(let reason):
                    let stopped = await Self.stopEveryGuest(node)
                    node.logger.critical(
                        "self-fenced: every VM of this node is stopped",
                        metadata: ["reason": "\(reason)", "stopped": "\(stopped)"])
                    (pending, early) = (false, nil)
                case .keepRunning(let reason):
                    if reason != said {
                        node.logger.warning("lease not renewed; VMs keep running", metadata: ["reason": "\(reason)"])
                    }
                    said = reason
                }
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
    }

    /// Whether to stop every VM of this node (destroyed, not shut down: a guest given time
    /// would write on): the other nodes' vcds say how long etcd still gives this node's
    /// lease (`SelfFence`). The storage's fencing, not this, keeps a lost node's writes off
    /// the disks; this keeps a VM from running on two nodes at once.
    private func selfFenceVerdict() async -> SelfFence.Verdict {
        let witnesses = await node.lease.witnesses
        guard let lease = await node.lease.lastID else { return .keepRunning("it never held a lease") }
        let answers = await withTaskGroup(of: SelfFence.Answer.self) { group in
            for w in witnesses { group.addTask { await node.peers.leaseLeft(lease, asking: w) } }
            return await group.reduce(into: [SelfFence.Answer]()) { $0.append($1) }
        }
        return SelfFence.decide(answers: answers)
    }

    /// Kills every running domain that carries Peerless's metadata; how many. QEMU gets
    /// SIGKILL at once: libvirt's destroy sends SIGTERM first and waits 10 s for it, and a
    /// QEMU whose iSCSI disk hangs (the node is cut off) spends them draining its I/O.
    /// libvirt's destroy then only cleans up after a process that is gone.
    static func stopEveryGuest(_ node: PeerNode) async -> Int {
        (try? await node.hypervisor.run { conn in
            var stopped = 0
            for d in try conn.allDomains()
            where d.isActive && d.metadata(namespace: DomainDocument.metadataNamespace) != nil {
                killQEMU(of: d.name)
                if (try? d.destroy()) != nil { stopped += 1 }
            }
            return stopped
        }) ?? 0
    }

    /// SIGKILL to the QEMU libvirt started for `domain`, found by its pid file and checked
    /// by its command line (a PID reused since is left alone).
    static func killQEMU(of domain: String) {
        guard let text = try? String(contentsOfFile: "/run/libvirt/qemu/\(domain).pid", encoding: .utf8),
            let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1,
            let raw = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline")
        else { return }
        let args = raw.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        guard args.first?.contains("qemu") == true,
            args.contains(where: { $0.hasPrefix("guest=\(domain),") || $0 == "guest=\(domain)" })
        else { return }
        kill(pid, SIGKILL)
    }
}

/// Pings systemd's watchdog at half its interval while the lease's deadline watcher runs
/// (`Readiness.healthy`). A vcd that hangs stops pinging; systemd kills it and its
/// `ExecStopPost` stops the node's VMs (systemd/vcd.service), since a hung vcd can no
/// longer self-fence. Says STOPPING=1 as soon as the graceful shutdown begins.
public struct WatchdogService: Service, CustomStringConvertible {
    let readiness: Readiness
    public var description: String { "Watchdog" }

    public func run() async throws {
        defer { SystemdNotifier.stopping() }
        guard let interval = SystemdNotifier.watchdogInterval else {
            // Nothing to ping; stay until the group stops.
            try? await gracefulShutdown()
            return
        }
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            if await readiness.healthy { SystemdNotifier.watchdog() }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval / 2) }
        }
    }
}

extension CatalogError {
    var isNameInUse: Bool { if case .nameInUse = self { true } else { false } }
}
