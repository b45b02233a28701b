import Foundation
import Logging
import NIOPosix
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

    /// Whether the lease's machine allows a watchdog ping (`LeaseMachine.watchdogMayPing`).
    private var mayPing = true

    /// The loop that takes the node's roles off and self-fences at the lease's deadline is
    /// alive, and whether its machine allows a watchdog ping now.
    public func watcherBeat(at now: ContinuousClock.Instant = .now, mayPing: Bool = true) {
        beat = now
        self.mayPing = mayPing
    }

    /// What systemd's watchdog is told: ready once, and the deadline watcher went round
    /// within the last second. Not whether the lease is held: without etcd's quorum
    /// anywhere the VMs are to keep running (`SelfFence`), and the watchdog's kill would
    /// stop them.
    public var healthy: Bool {
        guard announced, mayPing, let beat else { return false }
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
/// `NodeLease` sets it from its `LeaseMachine`'s directives.
public actor HeldLease {
    private var held: (id: Int64, until: ContinuousClock.Instant)?

    /// The lease to act under now: nil past the self-fence point, even before the lease's
    /// machine has said so.
    public var id: Int64? {
        guard let held, ContinuousClock.now < held.until else { return nil }
        return held.id
    }

    /// Until when work under the lease may go on: the machine's self-fence point, a margin
    /// before the earliest instant it can have expired on etcd's side.
    public var until: ContinuousClock.Instant? { held?.until }

    /// The lease is given up (lapsed, self-fenced, stopped).
    func drop() { held = nil }

    /// `lease` is revoked: dropped if it is the one held.
    func drop(_ lease: Int64) { if held?.id == lease { held = nil } }

    /// Another machine's vcd holds this node's name: this one acts as the node in nothing
    /// (no repair, no operation taken over) until it registers. Nil until the first
    /// registration was answered: whose the name is, is not known before.
    public private(set) var nameTaken: Bool?

    func name(taken: Bool) { nameTaken = taken }

    func held(_ id: Int64, until: ContinuousClock.Instant) {
        held = (id, until)
        last = id
    }

    /// The lease held last, kept once it is given up: what a live node that found this
    /// node lost names.
    public private(set) var last: Int64?

    /// The other nodes that registered, as last read: asked, when this node's lease runs
    /// out, how long etcd still gives its lease (see `SelfFence`).
    public private(set) var witnesses: [NodeRecord] = []

    func seen(_ others: [NodeRecord]) { witnesses = others }

    /// How the node's lease machine hears that a live node found this node lost.
    private var lostListener: (@Sendable () -> Void)?

    func onLost(_ listener: @escaping @Sendable () -> Void) { lostListener = listener }

    /// A live node found this node lost: its lease machine is told (it self-fences if it
    /// has lapsed).
    func toldLost() { lostListener?() }
}

/// The node's registration in the catalog under an etcd lease, renewed at a third of its
/// TTL. Other nodes (and `vc node list`) see this node exactly as long as the lease lives.
/// What to do when is `LeaseMachine`'s (VCModel, unit-tested with a simulated etcd); this
/// shell carries its directives out, each etcd request bounded as the machine says, and
/// reports every answer back to it.
public struct NodeLease: Service, CustomStringConvertible {
    public var description: String { "NodeLease" }
    let node: PeerNode
    let record: NodeRecord
    let readiness: Readiness

    /// Work under the lease stops this long before the lease can have expired.
    static let margin = LeaseMachine.Timers.defaultMargin
    /// How often the machine is given the time when nothing else happens.
    static let tick = Duration.milliseconds(100)

    typealias Instant = ContinuousClock.Instant

    /// What the shell hands the machine.
    enum Event: Sendable {
        case tick
        case granted(lease: Int64, ttl: Int, sentAt: Instant)
        case registrationFailed(sentAt: Instant, removed: Bool)
        case renewed(lease: Int64, ttl: Int, sentAt: Instant)
        case renewalFailed(lease: Int64, sentAt: Instant)
        case witnessed(lease: Int64, verdict: SelfFence.Verdict, sentAt: Instant)
        case fenced
        case stop
        /// A live node found this node lost (`HeldLease.toldLost`).
        case toldLost
    }

    /// The TTL asked of etcd, whole seconds (etcd's smallest at its default timers is 2).
    private var ttlSeconds: Int { max(node.configuration.leaseTTLSeconds, 2) }

    public func run() async throws {
        let timers = try LeaseMachine.Timers(ttlSeconds: ttlSeconds)
        var machine = LeaseMachine(timers: timers)
        let (events, sink) = AsyncStream.makeStream(of: Event.self)
        var removed = false
        await withDiscardingTaskGroup { group in
            group.addTask {
                while !Task.isCancelled {
                    sink.yield(.tick)
                    try? await Task.sleep(for: Self.tick)
                }
            }
            group.addTask {
                try? await gracefulShutdown()
                sink.yield(.stop)
            }
            await node.lease.onLost { sink.yield(.toldLost) }
            var directives = machine.start(now: .now)
            var stopping = false
            var said = ""
            for await event in events {
                let now = ContinuousClock.now
                switch event {
                case .tick:
                    directives += machine.tick(now: now)
                case .granted(let lease, let ttl, let sentAt):
                    directives += machine.granted(lease: lease, ttlSeconds: ttl, sentAt: sentAt, now: now)
                case .registrationFailed(let sentAt, let wasRemoved):
                    removed = removed || wasRemoved
                    directives += machine.registrationFailed(sentAt: sentAt, now: now)
                case .renewed(let lease, let ttl, let sentAt):
                    directives += machine.renewed(lease: lease, ttlSeconds: ttl, sentAt: sentAt, now: now)
                case .renewalFailed(let lease, let sentAt):
                    directives += machine.renewalFailed(lease: lease, sentAt: sentAt, now: now)
                case .witnessed(let lease, let verdict, let sentAt):
                    directives += machine.witnessed(lease: lease, verdict: verdict, sentAt: sentAt, now: now)
                    // Said once per reason while lapsed with the VMs running.
                    if case .lapsed = machine.state, case .keepRunning(let reason) = verdict, reason != said {
                        node.logger.warning("lease not renewed; VMs keep running", metadata: ["reason": "\(reason)"])
                        said = reason
                    }
                case .fenced:
                    directives += machine.fenced(now: now)
                case .toldLost:
                    directives += machine.toldLost(now: now)
                case .stop:
                    stopping = true
                    let others = await othersMayTakeOver()
                    directives += machine.stop(now: now, othersMayTakeOver: others)
                }
                for directive in directives {
                    if case .hold = directive { said = "" }
                    await carryOut(
                        directive, removed: removed, verdict: machine.verdict, group: &group, sink: sink)
                }
                directives = []
                await readiness.watcherBeat(mayPing: machine.watchdogMayPing)
                if stopping, machine.state == .stopped { break }
            }
            group.cancelAll()
        }
        await node.lease.drop()
    }

    private func carryOut(
        _ directive: LeaseMachine.Directive, removed: Bool, verdict: SelfFence.Verdict?,
        group: inout DiscardingTaskGroup,
        sink: AsyncStream<Event>.Continuation
    ) async {
        switch directive {
        case .register(let ttl, let sentAt, let fenced):
            // A removed node asks for no lease again (a restarted vcd is refused again).
            if removed {
                sink.yield(.registrationFailed(sentAt: sentAt, removed: true))
                return
            }
            group.addTask { sink.yield(await register(ttl: ttl, sentAt: sentAt, fenced: fenced)) }
        case .hold(let lease, let until):
            await node.lease.held(lease, until: until)
            await readiness.lease(held: true)
        case .renew(let lease, let sentAt, let deadline):
            group.addTask { sink.yield(await renew(lease, sentAt: sentAt, deadline: deadline)) }
        case .askWitnesses(let lease, let sentAt):
            group.addTask {
                sink.yield(.witnessed(lease: lease, verdict: await selfFenceVerdict(lease), sentAt: sentAt))
            }
        case .lapse(let lease, let reason):
            await lapse(lease, reason: reason)
        case .selfFence(let lease, let reason):
            await lapse(lease, reason: reason)
            group.addTask {
                let stopped = await Self.stopEveryGuest(node)
                var metadata: Logger.Metadata = [
                    "reason": "\(reason.rawValue)", "lease": "\(lease)", "stopped": "\(stopped)",
                ]
                if reason == .stopping {
                    node.logger.notice(
                        "vcd stopping: every VM of this node is stopped, for the other nodes to start",
                        metadata: metadata)
                } else {
                    if case .stop(let why) = verdict { metadata["verdict"] = "\(why)" }
                    node.logger.critical("self-fenced: every VM of this node is stopped", metadata: metadata)
                }
                sink.yield(.fenced)
            }
        case .revoke(let lease):
            await node.lease.drop(lease)
            try? await node.catalog.etcd.revoke(lease: lease, by: .now + .seconds(1))
        }
    }

    /// Grants a lease and registers the node under it, revoking first a lease the node
    /// self-fenced (`fenced`): until that lease is gone, the others still see the
    /// incarnations that ran under it.
    private func register(ttl: Int, sentAt: Instant, fenced: Int64?) async -> Event {
        let etcd = node.catalog.etcd
        do throws(CatalogError) {
            if let fenced {
                do {
                    try await etcd.revoke(lease: fenced)
                } catch .rejected(_, _, let message) where message.contains("lease not found") {
                    // Expired already.
                }
            }
            let granted = try await etcd.grantLease(ttlSeconds: ttl)
            do {
                try await node.catalog.register(record, lease: granted.id)
            } catch {
                try? await etcd.revoke(lease: granted.id)
                throw error
            }
            if Task.isCancelled {
                // vcd stopped meanwhile: nothing waits for this lease.
                try? await etcd.revoke(lease: granted.id)
                return .registrationFailed(sentAt: sentAt, removed: false)
            }
            await node.lease.name(taken: false)
            node.logger.info("node registered", metadata: ["lease": "\(granted.id)", "ttl": "\(granted.ttl)"])
            return .granted(lease: granted.id, ttl: granted.ttl, sentAt: sentAt)
        } catch .nameInUse(let name, let api) {
            // Another machine's vcd holds the name: said once, asked again each period
            // (when that machine is gone, its lease expires and the name is free).
            if await node.lease.nameTaken != true {
                node.logger.error("\(CatalogError.nameInUse(node: name, api: api))")
            }
            await node.lease.name(taken: true)
        } catch .removed {
            // Taken out (`vcnode remove`): it stays out, holding nothing, and says so once.
            // The name is this machine's all the same.
            await node.lease.name(taken: false)
            node.logger.error(
                "this node was removed from the cluster; it stays out",
                metadata: ["error": "\(CatalogError.removed(node: record.name))"])
            await readiness.lease(held: false)
            return .registrationFailed(sentAt: sentAt, removed: true)
        } catch {
            node.logger.warning("node registration failed", metadata: ["error": "\(error)"])
        }
        await readiness.lease(held: false)
        return .registrationFailed(sentAt: sentAt, removed: false)
    }

    /// One keep-alive, bounded by `deadline`. A TTL etcd reports longer than the one asked
    /// (a leader change) is not believed: the machine counts from the send time.
    /// Every request is bounded by `deadline`, and the etcd members share the time left: a
    /// renewal that waited out a member that is cut off would leave none for the others.
    private func renew(_ lease: Int64, sentAt: Instant, deadline: Instant) async -> Event {
        // The requests end by the deadline themselves; this bounds what else they wait on.
        await within(max(deadline - .now, .zero) + .milliseconds(200)) { await renewOnce(lease, sentAt, deadline) }
            ?? {
                node.logger.warning("lease renewal failed", metadata: ["error": "no answer by the lease's deadline"])
                return .renewalFailed(lease: lease, sentAt: sentAt)
            }()
    }

    @Sendable private func renewOnce(_ lease: Int64, _ sentAt: Instant, _ deadline: Instant) async -> Event {
        do throws(CatalogError) {
            let left = try await node.catalog.etcd.keepAlive(lease: lease, by: deadline)
            // The registration must still be under it: a node whose registration was
            // replaced while its lease was kept no longer holds the node's name by it.
            // A read that fails says nothing; the renewal stands.
            if left > 0, let registered = try? await node.catalog.registrationLease(record.name, by: deadline),
                registered != lease
            {
                node.logger.warning(
                    "the node's registration is no longer under its lease", metadata: ["lease": "\(lease)"])
                return .renewed(lease: lease, ttl: 0, sentAt: sentAt)
            }
            return .renewed(lease: lease, ttl: left, sentAt: sentAt)
        } catch {
            node.logger.warning("lease renewal failed", metadata: ["error": "\(error)"])
            return .renewalFailed(lease: lease, sentAt: sentAt)
        }
    }

    /// Whether another node may start this node's VMs once its lease is gone: it has seen
    /// one registered, or, not yet, the catalog lists one now (read within a second). A
    /// catalog that cannot be read says so when the node is one of several (it has an
    /// address between the nodes): its VMs are stopped rather than kept running where
    /// another node may start them.
    private func othersMayTakeOver() async -> Bool {
        if await !node.lease.witnesses.isEmpty { return true }
        guard let others = try? await node.catalog.members(by: .now + .seconds(1)).filter({ $0.name != node.name })
        else { return node.configuration.network.underlay != nil }
        if !others.isEmpty { await node.lease.seen(others) }
        return !others.isEmpty
    }

    /// Past the self-fence point: the gateway addresses come off (another node may take
    /// them once the lease has expired), nothing more is written under the lease. A node
    /// that never saw another keeps them: its guests keep DNS and DHCP on `.1`.
    private func lapse(_ lease: Int64, reason: LeaseMachine.FenceReason) async {
        guard await node.lease.until != nil else { return }
        await node.lease.drop()
        await readiness.lease(held: false)
        if reason == .stopping { return }
        if await !node.lease.witnesses.isEmpty {
            node.logger.warning(
                reason == .leaseGone
                    ? "lease gone: gateway addresses taken off"
                    : "lease not renewed in time: gateway addresses taken off",
                metadata: ["reason": "\(reason.rawValue)", "lease": "\(lease)"])
            await ClusterBridge.releaseGatewaysOnHost(plan: node.addresses, logger: node.logger)
        } else {
            node.logger.warning("lease not renewed in time; no other node: gateway addresses kept")
        }
    }

    /// What the other nodes' vcds say about `lease` (`SelfFence`): whether to stop every
    /// VM of this node (destroyed, not shut down: a guest given time would write on). The
    /// storage's fencing, not this, keeps a lost node's writes off the disks; this keeps
    /// a VM from running on two nodes at once.
    private func selfFenceVerdict(_ lease: Int64) async -> SelfFence.Verdict {
        let witnesses = await node.lease.witnesses
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
    ///
    /// The QEMUs are killed first from libvirt's status files, before any libvirt call: a
    /// libvirtd whose workers for this connection are all busy (calls to a QEMU whose disk
    /// hangs) would queue the destroy for seconds, while the other nodes start the VMs.
    static func stopEveryGuest(_ node: PeerNode) async -> Int {
        let started = ContinuousClock.now
        // The status files are the system libvirtd's; another URI's QEMUs are not looked for.
        // Off Swift's few cooperative threads: reading a wedged process's command line
        // can block.
        let killed: [String] =
            node.hypervisor.uri == "qemu:///system"
            ? ((try? await NIOThreadPool.singleton.runIfActive { killEveryGuestQEMU() }) ?? []) : []
        let destroyed: [String] =
            (try? await node.hypervisor.run { conn -> [String] in
                var destroyed: [String] = []
                for d in try conn.allDomains()
                where d.isActive && d.metadata(namespace: DomainDocument.metadataNamespace) != nil {
                    killQEMU(of: d.name)
                    if (try? d.destroy()) != nil { destroyed.append(d.name) }
                }
                return destroyed
            }) ?? []
        node.logger.debug(
            "every VM stopped",
            metadata: [
                "killed": "\(killed.sorted())", "destroyed": "\(destroyed.sorted())",
                "seconds": "\(ContinuousClock.now - started)",
            ])
        return Set(killed).union(destroyed).count
    }

    /// Where libvirt keeps a running domain's pid file and status (its definition inside).
    static let libvirtRunDirectory = "/run/libvirt/qemu"

    /// SIGKILL to every QEMU whose libvirt status names Peerless's metadata; their domains.
    static func killEveryGuestQEMU() -> [String] {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: libvirtRunDirectory)) ?? []
        var killed: [String] = []
        for file in files where file.hasSuffix(".pid") {
            let name = String(file.dropLast(4))
            guard
                let status = try? String(contentsOfFile: "\(libvirtRunDirectory)/\(name).xml", encoding: .utf8),
                status.contains(DomainDocument.metadataNamespace), killQEMU(of: name)
            else { continue }
            killed.append(name)
        }
        return killed
    }

    /// SIGKILL to the QEMU libvirt started for `domain`, found by its pid file and checked
    /// by its command line (a PID reused since is left alone).
    @discardableResult
    static func killQEMU(of domain: String) -> Bool {
        guard let text = try? String(contentsOfFile: "\(libvirtRunDirectory)/\(domain).pid", encoding: .utf8),
            let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1,
            let raw = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline")
        else { return false }
        let args = raw.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        guard args.first?.contains("qemu") == true,
            args.contains(where: { $0.hasPrefix("guest=\(domain),") || $0 == "guest=\(domain)" })
        else { return false }
        return kill(pid, SIGKILL) == 0
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
