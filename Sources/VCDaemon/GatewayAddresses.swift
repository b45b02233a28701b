import Logging
import VCCatalog
import VCModel
import VCNetwork

/// Carries out `GatewayElection` on this node: claims, keeps, resigns and releases the
/// gateway address of the networks it serves. Run by the bridge step (a network is served
/// from the moment its bridge exists) and by every reconcile pass (a holder that died
/// leaves the address to the next node that asks).
struct GatewayAddresses {
    let node: PeerNode

    /// Settles one cluster's gateway address. `holder` is the gateway key as read (pass
    /// `.some(nil)` when read and absent); nil reads it here. Failures are logged, not
    /// thrown: the address is a convenience of the network, and the next pass retries.
    func settle(_ cluster: VirtualCluster, holder: String?? = nil) async {
        let network = cluster.network
        guard !network.nodeAddresses.isEmpty else { return }
        let bridge = ClusterBridge(
            network: network, address: network.serviceAddress(of: node.name), logger: node.logger)
        var logger = node.logger
        logger[metadataKey: "cluster"] = "\(cluster.name)"
        let lease = await node.lease.id
        do {
            let current: String?
            if let holder { current = holder } else { current = try await node.catalog.gatewayHolders()[cluster.name] }
            let hosting = cluster.vms.contains { $0.node == node.name }
            switch GatewayElection.decide(
                network: network, node: node.name, hosting: hosting, holder: current, leaseHeld: lease != nil)
            {
            case .none:
                return
            case .campaign:
                guard let lease, await bridge.exists() else { return }
                if try await node.catalog.claimGateway(cluster.name, for: node.name, lease: lease) {
                    try await bridge.holdGateway()
                    logger.notice("holding the gateway address", metadata: ["address": "\(network.gateway)"])
                } else {
                    try await bridge.releaseGateway()
                }
            case .hold:
                if await bridge.exists() { try await bridge.holdGateway() }
            case .resign:
                try await bridge.releaseGateway()
                try await node.catalog.resignGateway(cluster.name, from: node.name)
            case .release:
                if await bridge.holdsGateway() {
                    try await bridge.releaseGateway()
                    logger.notice("released the gateway address", metadata: ["address": "\(network.gateway)"])
                }
            }
        } catch {
            // Without an answer from the catalog nobody can tell who holds it: give it up.
            try? await bridge.releaseGateway()
            logger.warning("cannot settle the gateway address", metadata: ["error": "\(DaemonError.from(error))"])
        }
    }

    /// Settles the gateway address of every cluster whose network this node serves or
    /// may still hold, except those an operation holds (its bridge step settles them).
    func settleAll(_ desired: DesiredWorld, bridges: Set<String>) async {
        guard let holders = try? await node.catalog.gatewayHolders() else {
            // Nobody can tell who holds them now: give them up.
            await ClusterBridge.releaseGatewaysOnHost(plan: node.addresses, logger: node.logger)
            return
        }
        for cluster in desired.clusters where !desired.busy.contains(cluster.name) {
            let hosting = cluster.vms.contains { $0.node == node.name }
            guard hosting || bridges.contains(cluster.network.bridge) || holders[cluster.name] == node.name else {
                continue
            }
            await settle(cluster, holder: .some(holders[cluster.name]))
        }
    }
}
