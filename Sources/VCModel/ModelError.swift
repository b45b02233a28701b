/// What the model refuses. Each case carries what the person needs to fix the input.
public enum ModelError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidName(kind: String, name: String, reason: String)
    case invalidSize(what: String, value: String, reason: String)
    case outOfRange(what: String, value: Int, range: ClosedRange<Int>)
    case insufficientMemory(neededMiB: Int, availableMiB: Int, node: String)
    case tooManyVCPUs(requested: Int, nodeCPUs: Int, node: String)
    case noFreeSubnet(limit: Int)
    /// A pin names a node the catalog does not know.
    case unknownNode(name: String, known: [String])
    /// A pinned node is alive but cordoned, or has no lease.
    case nodeNotReady(name: String, state: NodeState)
    /// A pinned node does not run VMs.
    case nodeWithoutCompute(name: String, roles: [NodeRole])
    /// No node is both ready and a compute node; the others by what keeps them out.
    case noReadyComputeNode(cordoned: [String], dead: [String], withoutCompute: [String])
    /// Every ready compute node has fewer CPUs than one VM asks for.
    case vcpusExceedEveryNode(cluster: String, vcpus: Int, mostCPUs: Int)
    /// The VMs do not fit in the free memory of the nodes that could take them. `freeMiB`
    /// is the largest free memories of those nodes before the decision, largest first, of
    /// `nodes` in all; `minCPUs` when nodes with fewer CPUs were left out, `hostLimit` when
    /// the cap on hosting nodes per cluster bound the decision.
    case clusterDoesNotFit(
        cluster: String, vms: Int, memoryMiB: Int, freeMiB: [Int], nodes: Int, minCPUs: Int?, hostLimit: Int?)
    /// An image is larger than the free space of the storage node's pool.
    case imageDoesNotFit(image: String, neededBytes: UInt64, freeBytes: UInt64, node: String)
    /// The storage node was asked to open an import its catalog record does not describe.
    case importNotOpen(image: String, reason: String)
    /// Lease, renewal and self-fence timers that cannot keep a node safe together.
    case invalidTimers(setting: String, reason: String)

    public var description: String {
        switch self {
        case .invalidName(let kind, let name, let reason):
            return "invalid \(kind) name '\(name)': \(reason)"
        case .invalidSize(let what, let value, let reason):
            return "invalid \(what) '\(value)': \(reason)"
        case .outOfRange(let what, let value, let range):
            return "\(what) must be between \(range.lowerBound) and \(range.upperBound), not \(value)"
        case .insufficientMemory(let needed, let available, let node):
            return
                "not enough memory: the cluster needs \(needed) MiB but node \(node) has \(available) MiB left; use fewer VMs or --memory"
        case .tooManyVCPUs(let requested, let cpus, let node):
            return "\(requested) vCPUs per VM is more than node \(node) has (\(cpus)); use --vcpus \(cpus) or less"
        case .noFreeSubnet(let limit):
            return "all \(limit) cluster networks are in use; destroy a cluster first"
        case .unknownNode(let name, let known):
            let list = known.isEmpty ? "none" : Self.listed(known, limit: 10)
            return "no node named '\(name)'; known nodes: \(list)"
        case .nodeNotReady(let name, .cordoned):
            return "node '\(name)' is cordoned and takes no new VMs; uncordon it or pin another node"
        case .nodeNotReady(let name, let state):
            return "node '\(name)' is \(state.rawValue) (its lease has expired); pin another node or start its vcd"
        case .nodeWithoutCompute(let name, let roles):
            let list = roles.isEmpty ? "none" : roles.sorted().map(\.rawValue).joined(separator: ", ")
            return "node '\(name)' does not run VMs (its roles: \(list)); pin a compute node"
        case .noReadyComputeNode(let cordoned, let dead, let withoutCompute):
            var why: [String] = []
            if !cordoned.isEmpty { why.append("cordoned: " + Self.listed(cordoned, limit: 5)) }
            if !dead.isEmpty { why.append("dead: " + Self.listed(dead, limit: 5)) }
            if !withoutCompute.isEmpty { why.append("not compute: " + Self.listed(withoutCompute, limit: 5)) }
            let known = why.isEmpty ? "no node is known" : why.joined(separator: "; ")
            return "no compute node is ready to take VMs (\(known)); uncordon one or start vcd on a compute node"
        case .vcpusExceedEveryNode(let cluster, let vcpus, let most):
            return
                "cluster '\(cluster)' asks for \(vcpus) vCPUs per VM, more than any ready compute node has (at most \(most)); use --vcpus \(most) or less"
        case .clusterDoesNotFit(let cluster, let vms, let memory, let free, let nodes, let minCPUs, let hostLimit):
            let cpus = minCPUs.map { " with \($0) or more CPUs" } ?? ""
            let shown = free.map { "\(max(0, $0))" }
            let have: String
            if nodes == 1 {
                have = "the only ready compute node\(cpus) has \(shown.first ?? "0") MiB free"
            } else if nodes > shown.count {
                have = "the \(nodes) ready compute nodes\(cpus) have \(shown.joined(separator: ", ")), … MiB free"
            } else {
                have = "the ready compute nodes\(cpus) have \(Self.listed(shown, limit: shown.count)) MiB free"
            }
            let cap = hostLimit.map { "; one cluster spans at most \($0) nodes" } ?? ""
            return
                "cluster '\(cluster)' does not fit: needs \(vms) × \(memory) MiB; \(have)\(cap); use fewer VMs or less --memory, or free a node"
        case .imageDoesNotFit(let image, let needed, let free, let node):
            return
                "image '\(image)' needs \(ByteSize.describe(bytes: needed)) but the pool of storage node \(node) has \(ByteSize.describe(bytes: free)) free; delete images no cluster uses (vc image delete) or import a smaller one"
        case .importNotOpen(let image, let reason):
            return "the import of image '\(image)' cannot be opened: \(reason); import it again"
        case .invalidTimers(let setting, let reason):
            return "\(setting) cannot be used: \(reason)"
        }
    }
}
