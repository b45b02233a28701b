/// A node as placement sees it: what it can give VMs and what it has already promised.
public struct NodeView: Sendable, Equatable {
    public var name: String
    public var state: NodeState
    public var roles: [NodeRole]
    public var cpus: Int
    /// Its memory capacity.
    public var memoryMiB: Int
    /// Memory kept back for the host itself (`NodeCapacity.reservedMiB`).
    public var reservedMiB: Int
    /// Memory promised to the VMs placed on it (`CommitmentLedger`).
    public var committedMiB: Int
    /// How many VMs are placed on it; spread breaks ties with it.
    public var vmCount: Int

    public init(
        name: String, state: NodeState, roles: [NodeRole], cpus: Int, memoryMiB: Int, reservedMiB: Int,
        committedMiB: Int, vmCount: Int
    ) {
        self.name = name
        self.state = state
        self.roles = roles
        self.cpus = cpus
        self.memoryMiB = memoryMiB
        self.reservedMiB = reservedMiB
        self.committedMiB = committedMiB
        self.vmCount = vmCount
    }

    /// A node's advertisement, how the cluster sees it, and what the ledger says it holds.
    public init(_ record: NodeRecord, state: NodeState, committedMiB: Int, vmCount: Int) {
        self.init(
            name: record.name, state: state, roles: record.roles, cpus: record.capacity.cpus,
            memoryMiB: record.capacity.memoryMiB, reservedMiB: record.capacity.reservedMiB,
            committedMiB: committedMiB, vmCount: vmCount)
    }

    /// Memory it can still promise; negative when it promised more than it has.
    public var freeMiB: Int { memoryMiB - reservedMiB - committedMiB }

    /// Whether new VMs may go there: a ready compute node.
    public var takesVMs: Bool { state == .ready && roles.contains(.compute) }
}

/// What one placement decision is asked: where the VMs of one cluster go.
public struct PlacementRequest: Sendable, Equatable {
    public var cluster: String
    /// The VMs to place, in the order they are placed.
    public var vms: [String]
    public var memoryMiB: Int
    public var vcpus: Int
    public var strategy: PlacementStrategy
    /// Every VM goes to this node, or the decision fails.
    public var pin: String?
    /// Placements to keep, VM name to node name: a VM stays on its node while that node is
    /// alive (a cordoned node keeps what it has), runs VMs, has the CPUs and still has the
    /// memory, and is the pinned node if there is a pin. Any other VM is placed anew.
    public var keep: [String: String]

    public init(
        cluster: String, vms: [String], memoryMiB: Int, vcpus: Int, strategy: PlacementStrategy = .spread,
        pin: String? = nil, keep: [String: String] = [:]
    ) {
        self.cluster = cluster
        self.vms = vms
        self.memoryMiB = memoryMiB
        self.vcpus = vcpus
        self.strategy = strategy
        self.pin = pin
        self.keep = keep
    }

    /// Every VM of a spec, with its strategy and pin.
    public init(spec: ClusterSpec, keep: [String: String] = [:]) {
        self.init(
            cluster: spec.name, vms: (0..<max(0, spec.vms)).map { Naming.vmName(cluster: spec.name, index: $0 + 1) },
            memoryMiB: spec.memoryMiB, vcpus: spec.vcpus, strategy: spec.placement ?? .spread, pin: spec.node,
            keep: keep)
    }
}

/// Decides which node each VM of a cluster runs on. Memory is the hard limit: a node gives
/// at most its capacity less its reserve less what it promised, and each VM placed in a
/// decision counts against its node for the rest of that decision. A VM's vCPUs must not
/// exceed its node's CPUs; vCPUs are not otherwise accounted. Only ready compute nodes take
/// VMs, and one cluster never spans more nodes than its network has node addresses for.
///
/// - `spread`: each VM goes to the node with the most free memory (ties: fewer VMs, then
///   the name), so 4 VMs over 3 equal nodes land 2/1/1.
/// - `pack`: each VM goes to the node with the least free memory that still fits (ties: the
///   name), so a node is filled before the next is used.
///
/// Deterministic: the same nodes and request always give the same placement. One decision
/// sorts the nodes once and moves only the chosen node afterwards (a binary search), so it
/// costs O(nodes log nodes + VMs × nodes) element moves at worst, far from a re-sort per VM.
public enum Placement {
    /// How many nodes may host one cluster's VMs: each needs an address on its network.
    public static let hostLimit = AddressPlan.nodeHosts.count

    /// Where each VM of `request` goes, VM name to node name, kept VMs included.
    public static func place(
        _ request: PlacementRequest, on nodes: [NodeView], hostLimit: Int = Placement.hostLimit
    ) throws(ModelError) -> [String: String] {
        guard !request.vms.isEmpty else { return [:] }
        var board = Board(nodes)
        let (candidates, minCPUs) = try eligible(for: request, on: board)

        var placement: [String: String] = [:]
        var rest: [String] = []
        var seen: Set<String> = []
        let pinned = request.pin.flatMap { board.index[$0] }
        for vm in request.vms where seen.insert(vm).inserted {
            if let node = request.keep[vm], let i = board.index[node],
                board.canKeep(i, request: request, pinned: pinned, hostLimit: hostLimit)
            {
                board.charge(i, request.memoryMiB)
                placement[vm] = node
            } else {
                rest.append(vm)
            }
        }
        guard !rest.isEmpty else { return placement }

        let startFree = candidates.map { board.free[$0] }
        var order = candidates.sorted { board.precedes($0, $1, request.strategy) }
        if board.hosts >= hostLimit { order.removeAll { !board.hosting[$0] } }
        for vm in rest {
            guard let at = board.choice(in: order, request.strategy, memoryMiB: request.memoryMiB) else {
                let capped = candidates.contains { !board.hosting[$0] && board.free[$0] >= request.memoryMiB }
                throw doesNotFit(
                    request, vms: rest.count, startFree: startFree, minCPUs: minCPUs,
                    hostLimit: capped && board.hosts >= hostLimit ? hostLimit : nil)
            }
            let i = order.remove(at: at)
            let wasHosting = board.hosting[i]
            board.charge(i, request.memoryMiB)
            placement[vm] = board.names[i]
            order.insert(i, at: board.position(of: i, in: order, request.strategy))
            if !wasHosting && board.hosts >= hostLimit { order.removeAll { !board.hosting[$0] } }
        }
        return placement
    }

    /// The nodes that may take new VMs of `request`, and the CPU floor when it left some
    /// ready compute nodes out; or why there are none.
    private static func eligible(for request: PlacementRequest, on board: Board) throws(ModelError) -> ([Int], Int?) {
        let views = board.views
        if let pin = request.pin {
            guard let i = board.index[pin] else { throw .unknownNode(name: pin, known: board.names.sorted()) }
            guard views[i].state == .ready else { throw .nodeNotReady(name: pin, state: views[i].state) }
            guard views[i].roles.contains(.compute) else { throw .nodeWithoutCompute(name: pin, roles: views[i].roles) }
            guard views[i].cpus >= request.vcpus else {
                throw .tooManyVCPUs(requested: request.vcpus, nodeCPUs: views[i].cpus, node: pin)
            }
            return ([i], nil)
        }
        let ready = views.indices.filter { views[$0].takesVMs }
        guard !ready.isEmpty else {
            func names(_ which: (NodeView) -> Bool) -> [String] { views.filter(which).map(\.name).sorted() }
            throw .noReadyComputeNode(
                cordoned: names { $0.state == .cordoned && $0.roles.contains(.compute) },
                dead: names { $0.state == .dead && $0.roles.contains(.compute) },
                withoutCompute: names { !$0.roles.contains(.compute) })
        }
        let able = ready.filter { views[$0].cpus >= request.vcpus }
        guard !able.isEmpty else {
            throw .vcpusExceedEveryNode(
                cluster: request.cluster, vcpus: request.vcpus, mostCPUs: ready.map { views[$0].cpus }.max() ?? 0)
        }
        return (able, able.count < ready.count ? request.vcpus : nil)
    }

    private static func doesNotFit(
        _ request: PlacementRequest, vms: Int, startFree: [Int], minCPUs: Int?, hostLimit: Int?
    ) -> ModelError {
        if let pin = request.pin {
            return .insufficientMemory(
                neededMiB: vms * request.memoryMiB, availableMiB: max(0, startFree.first ?? 0), node: pin)
        }
        return .clusterDoesNotFit(
            cluster: request.cluster, vms: vms, memoryMiB: request.memoryMiB,
            freeMiB: Array(startFree.sorted(by: >).prefix(3)), nodes: startFree.count, minCPUs: minCPUs,
            hostLimit: hostLimit)
    }
}

/// The state of one decision: each node's free memory and VM count as VMs are placed.
/// Plain arrays indexed by node, so comparisons touch no dictionary.
private struct Board {
    let views: [NodeView]
    let names: [String]
    let index: [String: Int]
    var free: [Int]
    var count: [Int]
    var hosting: [Bool]
    var hosts = 0

    init(_ nodes: [NodeView]) {
        var index: [String: Int] = [:]
        var views: [NodeView] = []
        // A name listed twice counts once, as first listed.
        for node in nodes where index[node.name] == nil {
            index[node.name] = views.count
            views.append(node)
        }
        self.views = views
        self.index = index
        names = views.map(\.name)
        free = views.map(\.freeMiB)
        count = views.map(\.vmCount)
        hosting = Array(repeating: false, count: views.count)
    }

    func canKeep(_ i: Int, request: PlacementRequest, pinned: Int?, hostLimit: Int) -> Bool {
        let view = views[i]
        return view.state != .dead && view.roles.contains(.compute) && view.cpus >= request.vcpus
            && free[i] >= request.memoryMiB && (pinned == nil || pinned == i) && (hosting[i] || hosts < hostLimit)
    }

    mutating func charge(_ i: Int, _ memoryMiB: Int) {
        free[i] -= memoryMiB
        count[i] += 1
        if !hosting[i] {
            hosting[i] = true
            hosts += 1
        }
    }

    /// Whether node `a` comes before node `b` in the strategy's order: spread puts the best
    /// first; pack sorts by free memory upwards, and picks the first that fits.
    func precedes(_ a: Int, _ b: Int, _ strategy: PlacementStrategy) -> Bool {
        switch strategy {
        case .spread:
            if free[a] != free[b] { return free[a] > free[b] }
            if count[a] != count[b] { return count[a] < count[b] }
            return names[a] < names[b]
        case .pack:
            if free[a] != free[b] { return free[a] < free[b] }
            return names[a] < names[b]
        }
    }

    /// Where in `order` the node for the next VM is, or nil when none fits.
    func choice(in order: [Int], _ strategy: PlacementStrategy, memoryMiB: Int) -> Int? {
        switch strategy {
        case .spread:
            guard let first = order.first, free[first] >= memoryMiB else { return nil }
            return 0
        case .pack:
            let at = partition(order) { free[$0] < memoryMiB }
            return at < order.count ? at : nil
        }
    }

    /// Where node `i` goes back into `order` to keep it sorted.
    func position(of i: Int, in order: [Int], _ strategy: PlacementStrategy) -> Int {
        partition(order) { precedes($0, i, strategy) }
    }

    /// The first index whose element is not `before`, in an order where every such
    /// element comes after every element that is.
    private func partition(_ order: [Int], before: (Int) -> Bool) -> Int {
        var low = 0
        var high = order.count
        while low < high {
            let mid = (low + high) / 2
            if before(order[mid]) { low = mid + 1 } else { high = mid }
        }
        return low
    }
}

/// Memory promised per node, from the catalog's clusters. A cluster promises its VMs'
/// memory on their nodes in every state but suspended: a suspended cluster's memory is in
/// the pool, and it is promised again by the resume that places it.
public struct CommitmentLedger: Sendable, Equatable {
    /// MiB promised per node name; a node with nothing promised is absent.
    public private(set) var committedMiB: [String: Int] = [:]
    /// VMs counted per node name, of the same clusters.
    public private(set) var vmCount: [String: Int] = [:]

    /// The promises of every cluster but `excluding` (the one being placed, whose VMs the
    /// decision charges itself).
    public init(clusters: some Sequence<VirtualCluster>, excluding: String? = nil) {
        self.init(summaries: clusters.lazy.map(ClusterSummary.init), excluding: excluding)
    }

    /// The same from summaries, which hold everything a promise depends on.
    public init(summaries: some Sequence<ClusterSummary>, excluding: String? = nil) {
        for cluster in summaries where cluster.name != excluding && Self.commits(cluster.state) {
            for vm in cluster.vms {
                committedMiB[vm.node, default: 0] += cluster.spec.memoryMiB
                vmCount[vm.node, default: 0] += 1
            }
        }
    }

    /// Whether a cluster in `state` holds memory on its VMs' nodes.
    public static func commits(_ state: ClusterState) -> Bool {
        switch state {
        case .suspended: return false
        case .creating, .resuming, .running, .suspending, .destroying, .failed: return true
        }
    }

    /// What one cluster promises per node: what its write adds to or takes from the
    /// per-node commitments.
    public static func commitment(of cluster: VirtualCluster) -> [String: Int] {
        guard commits(cluster.state) else { return [:] }
        return cluster.vms.reduce(into: [:]) { $0[$1.node, default: 0] += cluster.spec.memoryMiB }
    }

    public func committedMiB(of node: String) -> Int { committedMiB[node] ?? 0 }

    /// How placement sees `record` given these promises.
    public func view(of record: NodeRecord, state: NodeState) -> NodeView {
        NodeView(record, state: state, committedMiB: committedMiB(of: record.name), vmCount: vmCount[record.name] ?? 0)
    }
}

extension ModelError {
    /// `a, b and c`; past `limit` items, the first `limit` and how many more.
    static func listed(_ items: [String], limit: Int) -> String {
        guard items.count > limit else {
            guard let last = items.last, items.count > 1 else { return items.first ?? "" }
            return items.dropLast().joined(separator: ", ") + " and " + last
        }
        return items.prefix(limit).joined(separator: ", ") + " and \(items.count - limit) more"
    }
}
