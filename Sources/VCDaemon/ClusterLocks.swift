/// In-process exclusion of work on one cluster (or image): a lifecycle operation's task,
/// a reconcile pass and recovery never touch the same object at once. The etcd operation
/// key keeps other nodes out; this keeps this node's own tasks apart, including the
/// reconciler, which journals nothing. A journal entry whose object nobody here holds is
/// an orphan: its task died with a previous vcd, or its last catalog write failed.
///
/// An administrator's operation is refused at once when another operation holds the
/// object, but waits behind a repair pass: those are short and run on their own every
/// few seconds, so refusing would make `vc cluster suspend` fail at random.
public actor ClusterLocks {
    public enum Holder: Sendable, Equatable {
        /// A lifecycle operation, or the recovery of one a previous vcd left.
        case operation
        /// A reconcile pass re-making what a running cluster needs.
        case repair
    }

    public enum Refusal: Error, Equatable {
        /// Another operation holds the object.
        case busy
        /// A repair pass held it for longer than the caller would wait.
        case repairTooLong
    }

    /// A suspended `lockForOperation`: resumed with true by `unlock`, with false by its timer.
    private struct Waiter {
        var continuation: CheckedContinuation<Bool, Never>
        var timer: Task<Void, Never>
    }

    private var held: [String: Holder] = [:]
    private var waiters: [String: [Int: Waiter]] = [:]
    private var nextWaiter = 0

    public init() {}

    /// Takes the lock if free; never waits.
    public func tryLock(_ name: String, as holder: Holder) -> Bool {
        guard held[name] == nil else { return false }
        held[name] = holder
        return true
    }

    /// Takes the lock for an operation, waiting up to `patience` while a repair pass holds it.
    public func lockForOperation(_ name: String, patience: Duration) async throws(Refusal) {
        let deadline = ContinuousClock.now + patience
        while true {
            switch held[name] {
            case nil:
                held[name] = .operation
                return
            case .operation:
                throw .busy
            case .repair:
                let left = deadline - ContinuousClock.now
                guard left > .zero, await released(name, within: left) else { throw .repairTooLong }
            }
        }
    }

    public func unlock(_ name: String) {
        held[name] = nil
        for waiter in (waiters.removeValue(forKey: name) ?? [:]).values {
            waiter.timer.cancel()
            waiter.continuation.resume(returning: true)
        }
    }

    public func isLocked(_ name: String) -> Bool { held[name] != nil }

    /// How many operations wait for `name` (tests use it to know a wait began).
    func waiting(for name: String) -> Int { waiters[name]?.count ?? 0 }

    /// Suspends until `name` is unlocked (true) or `limit` passes (false).
    private func released(_ name: String, within limit: Duration) async -> Bool {
        nextWaiter += 1
        let id = nextWaiter
        return await withCheckedContinuation { continuation in
            let timer = Task {
                // Cancelled when the lock is released first.
                guard (try? await Task.sleep(for: limit)) != nil else { return }
                self.giveUp(name, id)
            }
            waiters[name, default: [:]][id] = Waiter(continuation: continuation, timer: timer)
        }
    }

    private func giveUp(_ name: String, _ id: Int) {
        waiters[name]?.removeValue(forKey: id)?.continuation.resume(returning: false)
    }
}
