/// What the model refuses. Each case carries what the person needs to fix the input.
public enum ModelError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidName(kind: String, name: String, reason: String)
    case invalidSize(what: String, value: String, reason: String)
    case outOfRange(what: String, value: Int, range: ClosedRange<Int>)
    case insufficientMemory(neededMiB: Int, availableMiB: Int, node: String)
    case tooManyVCPUs(requested: Int, nodeCPUs: Int, node: String)
    case noFreeSubnet(limit: Int)

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
        }
    }
}
