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
    func set(_ id: Int64?) { self.id = id }
}

/// The node's registration in the catalog under an etcd lease, renewed at a third of its
/// TTL. Other nodes (and `vc node list`) see this node exactly as long as the lease lives.
public struct NodeLease: Service, CustomStringConvertible {
    public var description: String { "NodeLease" }
    let node: PeerNode
    let record: NodeRecord
    let readiness: Readiness

    public func run() async throws {
        var lease: Int64?
        let ttl = max(node.configuration.leaseTTLSeconds, 2)
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do {
                if let id = lease, try await node.catalog.etcd.keepAlive(lease: id) > 0 {
                    await readiness.lease(held: true)
                    await node.lease.set(id)
                } else {
                    await node.lease.set(nil)
                    let granted = try await node.catalog.etcd.grantLease(ttlSeconds: ttl)
                    try await node.catalog.register(record, lease: granted.id)
                    lease = granted.id
                    node.logger.info("node registered", metadata: ["lease": "\(granted.id)", "ttl": "\(granted.ttl)"])
                    await readiness.lease(held: true)
                    await node.lease.set(granted.id)
                }
            } catch {
                if Task.isCancelled { break }
                node.logger.warning("lease renewal failed", metadata: ["error": "\(error)"])
                await readiness.lease(held: false)
                await node.lease.set(nil)
                // Another node may hold this node's gateway addresses before long.
                await ClusterBridge.releaseGatewaysOnHost(plan: node.addresses, logger: node.logger)
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(Double(ttl) / 3)) }
        }
        await node.lease.set(nil)
        if let lease { try? await node.catalog.etcd.revoke(lease: lease) }
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
