/// In-process exclusion of work on one cluster (or image): a lifecycle operation's task,
/// a reconcile pass and recovery never touch the same object at once. The etcd operation
/// key keeps other nodes out; this keeps this node's own tasks apart, including the
/// reconciler, which journals nothing. A journal entry whose object nobody here holds is
/// an orphan: its task died with a previous vcd, or its last catalog write failed.
public actor ClusterLocks {
    private var held: Set<String> = []

    public init() {}

    /// Takes the lock if free; never waits.
    public func tryLock(_ name: String) -> Bool { held.insert(name).inserted }

    public func unlock(_ name: String) { held.remove(name) }

    public func isLocked(_ name: String) -> Bool { held.contains(name) }
}
