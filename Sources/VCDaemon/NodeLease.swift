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

    public var healthy: Bool { leaseHeld }

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

    func held(_ id: Int64, until: ContinuousClock.Instant) {
        self.id = id
        self.until = until
    }

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

    public func run() async throws {
        await withDiscardingTaskGroup { group in
            group.addTask { await watchDeadline() }
            await renew()
            group.cancelAll()
        }
    }

    private func renew() async {
        var lease: Int64?
        let ttl = max(node.configuration.leaseTTLSeconds, 2)
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            let sent = ContinuousClock.now
            do {
                // A TTL etcd reports longer than the one asked (a leader change) is not
                // believed: the time left is counted from the send time.
                if let id = lease, case let left = try await node.catalog.etcd.keepAlive(lease: id), left > 0 {
                    await readiness.lease(held: true)
                    await node.lease.held(id, until: sent + .seconds(min(left, ttl)) - Self.margin)
                } else {
                    await node.lease.set(nil)
                    let granted = try await node.catalog.etcd.grantLease(ttlSeconds: ttl)
                    try await node.catalog.register(record, lease: granted.id)
                    lease = granted.id
                    node.logger.info("node registered", metadata: ["lease": "\(granted.id)", "ttl": "\(granted.ttl)"])
                    await readiness.lease(held: true)
                    await node.lease.held(granted.id, until: sent + .seconds(min(granted.ttl, ttl)) - Self.margin)
                }
            } catch {
                if Task.isCancelled { break }
                // The lease is kept until its deadline (`watchDeadline` gives it up then):
                // one renewal lost to an etcd election takes nothing off.
                node.logger.warning("lease renewal failed", metadata: ["error": "\(error)"])
                await readiness.lease(held: false)
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(Double(ttl) / 3)) }
        }
        await node.lease.set(nil)
        if let lease { try? await node.catalog.etcd.revoke(lease: lease) }
    }

    /// A renewal that hangs (etcd cut off, each endpoint waited for) must not keep the
    /// gateway addresses past the instant another node may take them: at the lease's
    /// deadline they come off, whatever the renewal in flight answers later.
    private func watchDeadline() async {
        while !Task.isCancelled {
            if await node.lease.expire(now: .now) {
                node.logger.warning("lease not renewed in time: gateway addresses taken off")
                await readiness.lease(held: false)
                await ClusterBridge.releaseGatewaysOnHost(plan: node.addresses, logger: node.logger)
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
    }
}

/// Pings systemd's watchdog at half its interval while the node is healthy. A vcd that
/// hangs, or that cannot keep its lease, stops pinging and is restarted by systemd. Says
/// STOPPING=1 as soon as the graceful shutdown begins.
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
