import Synchronization

/// What `work` gives within `bound`, or nil once `bound` has passed. Past the bound,
/// `work` is cancelled and left to end on its own: a request to a node that is cut off
/// may wait for its connect timeout whatever it is told, and the caller must not.
func within<T: Sendable>(_ bound: Duration, _ work: @escaping @Sendable () async -> T?) async -> T? {
    let once = Once()
    return await withCheckedContinuation { (answer: CheckedContinuation<T?, Never>) in
        let task = Task {
            let value = await work()
            if once.claim() { answer.resume(returning: value) }
        }
        Task {
            try? await Task.sleep(for: bound)
            if once.claim() {
                task.cancel()
                answer.resume(returning: nil)
            }
        }
    }
}

/// True for the first caller only.
private final class Once: Sendable {
    private let claimed = Mutex(false)

    func claim() -> Bool {
        claimed.withLock { taken in
            defer { taken = true }
            return !taken
        }
    }
}
