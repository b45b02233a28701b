/// What the catalog wants of one node, with what the plan needs to read it.
public struct DesiredWorld: Sendable, Equatable {
    /// The node whose share this is.
    public var node: String
    public var roles: [NodeRole]
    /// Bridges are this prefix and a subnet index (`AddressPlan.bridgePrefix`): the plan's
    /// name space for bridges, overlays, firewall tables and DHCP servers.
    public var bridgePrefix: String
    /// Every cluster in the catalog.
    public var clusters: [VirtualCluster]
    /// Clusters with an operation in progress: the operation owns them, so the plan leaves
    /// alone everything of theirs and everything named after them.
    public var busy: Set<String>
    /// Each node's underlay address, by node name: where VXLAN tunnels end.
    public var underlays: [String: String]
    /// Clusters whose disk secrets exist in the catalog. Any other is closed.
    public var withSecrets: Set<String>
    /// The storage pool's root on this node: a disk target must serve the VM's disk file
    /// under it.
    public var poolRoot: String
    /// Initiator names fenced at the storage (`NodeLoss`): such an incarnation is never
    /// exported nor started again, wherever it is still placed; it waits, placed nowhere
    /// as far as this plan goes, for its recovery to give it a new generation.
    public var fenced: Set<String>

    public init(
        node: String, roles: [NodeRole], bridgePrefix: String = "vcbr", clusters: [VirtualCluster],
        busy: Set<String> = [], underlays: [String: String] = [:], withSecrets: Set<String>, poolRoot: String,
        fenced: Set<String> = []
    ) {
        self.node = node
        self.roles = roles
        self.bridgePrefix = bridgePrefix
        self.clusters = clusters
        self.busy = busy
        self.underlays = underlays
        self.withSecrets = withSecrets
        self.poolRoot = poolRoot
        self.fenced = fenced
    }
}

/// What one node holds in Peerless's name spaces, as its shell listed it.
public struct ObservedNode: Sendable, Equatable {
    /// A libvirt domain that carries Peerless's metadata.
    public struct Domain: Sendable, Hashable {
        public var name: String
        /// The cluster its metadata names.
        public var cluster: String
        public var active: Bool
        public var paused: Bool
        /// The initiator name its disk logs in with, when the shell read it from the
        /// definition: one of another incarnation is never started.
        public var initiator: String?

        public init(name: String, cluster: String, active: Bool, paused: Bool = false, initiator: String? = nil) {
            self.name = name
            self.cluster = cluster
            self.active = active
            self.paused = paused
            self.initiator = initiator
        }
    }

    /// A tgt target.
    public struct Target: Sendable, Hashable {
        public var iqn: String
        /// The initiator names bound to it.
        public var initiators: Set<String>
        /// Its CHAP account, if one is bound.
        public var account: String?
        /// The file its LUN serves, if it has one.
        public var file: String?

        public init(iqn: String, initiators: Set<String>, account: String?, file: String?) {
            self.iqn = iqn
            self.initiators = initiators
            self.account = account
            self.file = file
        }
    }

    /// A VXLAN link and the peers its all-zeros forwarding entries flood to.
    public struct Overlay: Sendable, Hashable {
        public var name: String
        public var vni: Int
        public var peers: Set<String>

        public init(name: String, vni: Int, peers: Set<String>) {
            self.name = name
            self.vni = vni
            self.peers = peers
        }
    }

    public var domains: [Domain]
    public var targets: [Target]
    /// Bridges that exist.
    public var bridges: Set<String>
    public var overlays: [Overlay]
    /// Loaded nftables table names (`peerless_BRIDGE`), whatever their family.
    public var firewallTables: Set<String>
    /// Bridges with a dnsmasq running for them.
    public var dhcp: Set<String>
    /// Bridges with a dnsmasq's files (configuration, pid file, log), running or not: a
    /// node killed with its dnsmasq leaves them behind.
    public var dhcpFiles: Set<String>
    /// Bridges whose firewall tables are loaded and match what this vcd would load.
    public var currentFirewalls: Set<String>

    public init(
        domains: [Domain] = [], targets: [Target] = [], bridges: Set<String> = [], overlays: [Overlay] = [],
        firewallTables: Set<String> = [], dhcp: Set<String> = [], dhcpFiles: Set<String> = [],
        currentFirewalls: Set<String> = []
    ) {
        self.domains = domains
        self.targets = targets
        self.bridges = bridges
        self.overlays = overlays
        self.firewallTables = firewallTables
        self.dhcp = dhcp
        self.dhcpFiles = dhcpFiles
        self.currentFirewalls = currentFirewalls
    }
}

/// One thing a node's reconciler does to match the catalog.
public enum Repair: Hashable, Sendable, CustomStringConvertible {
    /// Makes a step of a cluster again (each step is idempotent).
    case perform(cluster: String, step: Step)
    /// Stops (if running) and undefines a domain.
    case removeDomain(name: String)
    case removeTarget(iqn: String)
    case removeBridge(name: String)
    case removeOverlay(name: String)
    /// Deletes both tables of a network's tenant boundary.
    case removeFirewall(bridge: String)
    case stopDHCP(bridge: String)
    /// Marks a cluster without disk secrets failed, saying why and what to do.
    case close(cluster: String)

    /// The cluster a repair works on, to be locked while it runs; nil for removals of what
    /// belongs to no cluster.
    public var cluster: String? {
        switch self {
        case .perform(let cluster, _), .close(let cluster): return cluster
        case .removeDomain, .removeTarget, .removeBridge, .removeOverlay, .removeFirewall, .stopDHCP: return nil
        }
    }

    public var description: String {
        switch self {
        case .perform(let cluster, let step): return "cluster \(cluster): \(step)"
        case .removeDomain(let name): return "remove domain \(name)"
        case .removeTarget(let iqn): return "remove target \(iqn)"
        case .removeBridge(let name): return "remove bridge \(name)"
        case .removeOverlay(let name): return "remove overlay \(name)"
        case .removeFirewall(let bridge): return "remove firewall \(GuestBoundary.table(bridge: bridge))"
        case .stopDHCP(let bridge): return "stop dnsmasq on \(bridge)"
        case .close(let cluster): return "close cluster \(cluster) (no disk secrets)"
        }
    }
}

/// The reconciler of one node as a pure function: from what the catalog wants and what
/// the node holds, the repairs that make the node's share of the world match.
///
/// What a node keeps and makes:
/// - A compute node hosts the network of every settled (running, suspended, failed)
///   cluster with at least one VM placed on it: the tenant boundary (made again when
///   missing or not current), the bridge, the overlay with exactly the underlay addresses
///   of the *other* nodes hosting the cluster's VMs (none, and no overlay, when it hosts
///   them alone), and dnsmasq.
/// - For a running cluster, every VM placed on a compute node has a domain there that is
///   active and not paused: a missing domain (or one defined for another incarnation,
///   which is removed first) gets secret, define, start and release; an inactive one start
///   and release; a paused one release. Suspended and failed clusters' domains are never
///   started.
/// - A storage node has, for every VM of every running cluster, a target named the VM's
///   `diskIQN`, serving its disk file, with the CHAP account `Naming.chapUser(vm:)` and
///   bound to exactly `vm.initiator` (the current incarnation): else it is exported again,
///   which also cuts off any earlier incarnation.
/// - A cluster without disk secrets is closed: its disk targets are removed, none of its
///   VMs is started, and it is marked failed (by the nodes hosting its VMs, and by storage
///   nodes) unless it already is.
/// - A fenced incarnation (`DesiredWorld.fenced`) counts as placed nowhere: its target is
///   kept but never bound to it again, and its domain is removed, until its recovery
///   places the VM anew.
///
/// What a node removes, in Peerless's name spaces only, of what is placed nowhere:
/// - a domain with Peerless metadata whose VM is not placed on this node in any cluster
///   (a node that came back after its VMs went elsewhere stops and undefines them);
/// - a disk target (`Naming.iqnPrefix:disk.`) whose VM is in no cluster (import targets
///   are not the plan's business);
/// - a bridge (`PREFIX` + digits), overlay (bridge + `x`), firewall table (`peerless_` +
///   bridge) or dnsmasq whose bridge belongs to no cluster with a VM placed on this node
///   (also the network of a cluster whose VMs all moved to other nodes).
///
/// Never touched: clusters in `busy`, their VMs' domains and targets, their networks, and
/// any domain whose metadata names one of them.
///
/// Order: domain removals, target removals and closes first (a node that came back frees
/// its memory before it starts anything), then per cluster its network, its exports and
/// its VMs (a disk is exported before its VM starts when one node does both),
/// then network removals (dnsmasq, overlay, bridge), and the firewall tables last, so no
/// bridge is ever without its boundary. Applying the repairs and planning again gives [].
public enum NodePlan {
    /// States in which no operation works on a cluster and its network may be up.
    public static let settled: Set<ClusterState> = [.running, .suspended, .failed]

    public static func plan(desired: DesiredWorld, observed: ObservedNode) -> [Repair] {
        let here = desired.node
        let compute = desired.roles.contains(.compute)
        let storage = desired.roles.contains(.storage)
        let names = NameSpace(bridgePrefix: desired.bridgePrefix)
        let clusters = desired.clusters

        // One pass over the catalog and one over what the node lists; everything else is a
        // lookup by name, so a plan costs O(VMs + listed objects) and copies no records.
        var domainIndex: [String: Int] = .init(minimumCapacity: observed.domains.count)
        for (d, domain) in observed.domains.enumerated() where domainIndex[domain.name] == nil {
            domainIndex[domain.name] = d
        }
        var domainClaimed = Array(repeating: false, count: observed.domains.count)
        var targetIndex: [String: Int] = .init(minimumCapacity: observed.targets.count)
        for (t, target) in observed.targets.enumerated() where names.isDiskTarget(target.iqn) {
            if targetIndex[target.iqn] == nil { targetIndex[target.iqn] = t }
        }
        var targetClaimed = Array(repeating: false, count: observed.targets.count)
        let overlays = Dictionary(observed.overlays.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })

        var busyVMs: Set<String> = []
        var protectedBridges: Set<String> = []
        var targetRemovals: [String] = []
        var closes: [Repair] = []
        var makes: [Repair] = []
        for c in clusters.indices.sorted(by: { clusters[$0].name < clusters[$1].name }) {
            let cluster = clusters[c]
            let name = cluster.name
            if desired.busy.contains(name) {
                // Its operation owns all of it, whatever the rest of the plan says.
                protectedBridges.insert(cluster.network.bridge)
                for vm in cluster.vms {
                    busyVMs.insert(vm.name)
                    if let t = targetIndex[vm.diskIQN] { targetClaimed[t] = true }
                }
                continue
            }
            let closed = !desired.withSecrets.contains(name)
            let fenced = desired.fenced
            let hostsHere = cluster.vms.contains { $0.node == here && !fenced.contains($0.initiator) }
            if hostsHere { protectedBridges.insert(cluster.network.bridge) }
            if closed && cluster.state != .failed && (storage || hostsHere) { closes.append(.close(cluster: name)) }

            let hosted = hostsHere && compute && settled.contains(cluster.state)
            if hosted { makes += network(of: cluster, desired: desired, observed: observed, overlays: overlays) }
            let exports = storage && cluster.state == .running && !closed
            let runs = hosted && cluster.state == .running && !closed
            var machines: [Repair] = []
            for vm in cluster.vms {
                let t = targetIndex.isEmpty ? nil : targetIndex[vm.diskIQN]
                if let t {
                    targetClaimed[t] = true
                    if closed { targetRemovals.append(vm.diskIQN) }
                }
                // Exports before the VMs here start from them.
                let isFenced = !fenced.isEmpty && fenced.contains(vm.initiator)
                if exports && !isFenced && !serves(t.map { observed.targets[$0] }, vm, desired.poolRoot) {
                    makes.append(.perform(cluster: name, step: .export(vm: vm.name)))
                }
                guard vm.node == here, !isFenced else { continue }
                var domain: ObservedNode.Domain? = nil
                if let d = domainIndex[vm.name], observed.domains[d].cluster == name {
                    domainClaimed[d] = true
                    domain = observed.domains[d]
                }
                if runs { machines += machine(vm, of: name, domain: domain) }
            }
            makes += machines
        }

        var repairs: [Repair] = []
        // Domains placed nowhere here (one whose metadata names another cluster included).
        var domainRemovals: [String] = []
        for (d, domain) in observed.domains.enumerated() where !domainClaimed[d] {
            if !desired.busy.contains(domain.cluster) && !busyVMs.contains(domain.name) {
                domainRemovals.append(domain.name)
            }
        }
        repairs += domainRemovals.sorted().map { .removeDomain(name: $0) }
        // Disk targets of no cluster, or of a closed one.
        for (iqn, t) in targetIndex where !targetClaimed[t] { targetRemovals.append(iqn) }
        repairs += targetRemovals.sorted().map { .removeTarget(iqn: $0) }
        repairs += closes
        repairs += makes

        // Networks kept by no cluster here, their boundaries last.
        var orphans: Set<String> = []
        orphans.formUnion(observed.bridges.filter(names.isBridge))
        orphans.formUnion(observed.dhcp.union(observed.dhcpFiles).filter(names.isBridge))
        orphans.formUnion(observed.overlays.compactMap { names.bridge(ofOverlay: $0.name) })
        orphans.subtract(protectedBridges)
        for bridge in orphans.sorted(by: NameSpace.bridgeOrder) {
            if observed.dhcp.contains(bridge) || observed.dhcpFiles.contains(bridge) {
                repairs.append(.stopDHCP(bridge: bridge))
            }
            let overlay = Naming.overlay(bridge: bridge)
            if overlays[overlay] != nil { repairs.append(.removeOverlay(name: overlay)) }
            if observed.bridges.contains(bridge) { repairs.append(.removeBridge(name: bridge)) }
        }
        let orphanTables = observed.firewallTables.compactMap(names.bridge(ofTable:))
            .filter { !protectedBridges.contains($0) }
        repairs += orphanTables.sorted(by: NameSpace.bridgeOrder).map { .removeFirewall(bridge: $0) }
        return repairs
    }

    /// The network steps a hosting compute node needs for `cluster`.
    private static func network(
        of cluster: VirtualCluster, desired: DesiredWorld, observed: ObservedNode,
        overlays: [String: ObservedNode.Overlay]
    ) -> [Repair] {
        let bridge = cluster.network.bridge
        var steps: [Step] = []
        if !observed.currentFirewalls.contains(bridge) { steps.append(.firewall) }
        if !observed.bridges.contains(bridge) { steps.append(.bridge) }
        let peers = Set(
            cluster.vms.lazy.map(\.node).filter { $0 != desired.node }.compactMap { desired.underlays[$0] })
        let overlayName = Naming.overlay(bridge: bridge)
        let overlay = overlays[overlayName]
        var removal: [Repair] = []
        if peers.isEmpty {
            if overlay != nil { removal.append(.removeOverlay(name: overlayName)) }
        } else if overlay?.vni != cluster.network.vni || overlay?.peers != peers {
            steps.append(.overlay)
        }
        if !observed.dhcp.contains(bridge) { steps.append(.dhcp) }
        return steps.map { .perform(cluster: cluster.name, step: $0) } + removal
    }

    /// What a VM of a running cluster placed here needs for its domain to run.
    private static func machine(_ vm: VirtualMachine, of cluster: String, domain: ObservedNode.Domain?) -> [Repair] {
        let steps: [Step]
        var repairs: [Repair] = []
        if let domain, domain.initiator == nil || domain.initiator == vm.initiator {
            if !domain.active {
                steps = [.start(vm: vm.name), .release(vm: vm.name)]
            } else if domain.paused {
                steps = [.release(vm: vm.name)]
            } else {
                steps = []
            }
        } else {
            // A definition of another incarnation would log in with a name that is no
            // longer admitted: it is made again from the catalog.
            if domain != nil { repairs.append(.removeDomain(name: vm.name)) }
            steps = [.secret(vm: vm.name), .define(vm: vm.name), .start(vm: vm.name), .release(vm: vm.name)]
        }
        return repairs + steps.map { .perform(cluster: cluster, step: $0) }
    }

    /// Whether `target` serves `vm`'s disk to its current incarnation only, behind its account.
    private static func serves(_ target: ObservedNode.Target?, _ vm: VirtualMachine, _ poolRoot: String) -> Bool {
        guard let target, target.initiators.count == 1, target.initiators.contains(vm.initiator) else { return false }
        return target.account == Naming.chapUser(vm: vm.name) && target.file == "\(poolRoot)/\(vm.diskFile)"
    }
}

/// Peerless's names on a node, under one bridge prefix.
private struct NameSpace {
    let bridgePrefix: String

    /// `PREFIX` followed by digits only.
    func isBridge(_ name: String) -> Bool {
        guard name.hasPrefix(bridgePrefix) else { return false }
        let rest = name.utf8.dropFirst(bridgePrefix.utf8.count)
        return !rest.isEmpty && rest.allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
    }

    func bridge(ofOverlay name: String) -> String? {
        guard name.hasSuffix("x") else { return nil }
        let bridge = String(name.dropLast())
        return isBridge(bridge) ? bridge : nil
    }

    func bridge(ofTable name: String) -> String? {
        let prefix = GuestBoundary.table(bridge: "")
        guard name.hasPrefix(prefix) else { return nil }
        let bridge = String(name.dropFirst(prefix.count))
        return isBridge(bridge) ? bridge : nil
    }

    func isDiskTarget(_ iqn: String) -> Bool { iqn.hasPrefix(Self.diskTargets) }

    private static let diskTargets = Naming.diskIQN(vm: "")

    /// Numeric order of subnet indexes under one prefix: shorter names first.
    static func bridgeOrder(_ a: String, _ b: String) -> Bool {
        a.utf8.count != b.utf8.count ? a.utf8.count < b.utf8.count : a < b
    }
}
