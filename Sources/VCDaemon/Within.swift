import Synchronization

/// What `work` gives within `bound`, or nil once `bound` has passed or the caller was
/// cancelled. Then `work` is cancelled and left to end on its own: a request to a node
/// that is cut off may wait for its connect timeout whatever it is told, and the caller
/// must not (a stopping vcd does not wait out the bounds of the requests in flight).
func within<T: Sendable>(_ bound: Duration, _ work: @escaping @Sendable () async -> T?) async -> T? {
    let race = Race<T>()
    return await withTaskCancellationHandler {
        await withCheckedContinuation { (answer: CheckedContinuation<T?, Never>) in
            race.start(answer, bound: bound, work: work)
        }
    } onCancel: {
        race.finish(nil)
    }
}

/// The answer of `work` against the clock and the caller's cancellation: the first to
/// finish resumes the caller, and the other tasks are cancelled.
private final class Race<T: Sendable>: Sendable {
    private struct State {
        var answer: CheckedContinuation<T?, Never>?
        var tasks: [Task<Void, Never>] = []
        /// The first result, once there is one.
        var result: T??
    }
    private let state = Mutex(State())

    func start(
        _ answer: CheckedContinuation<T?, Never>, bound: Duration, work: @escaping @Sendable () async -> T?
    ) {
        let tasks = [
            Task { self.finish(await work()) },
            Task {
                try? await Task.sleep(for: bound)
                self.finish(nil)
            },
        ]
        let early: T?? = state.withLock { state in
            if let result = state.result { return result }
            state.answer = answer
            state.tasks = tasks
            return nil
        }
        // Finished (or cancelled) before the tasks were stored: nothing else resumes.
        if let early {
            for task in tasks { task.cancel() }
            answer.resume(returning: early)
        }
    }

    func finish(_ value: T?) {
        let taken: (CheckedContinuation<T?, Never>?, [Task<Void, Never>])? = state.withLock { state in
            guard state.result == nil else { return nil }
            state.result = .some(value)
            defer { (state.answer, state.tasks) = (nil, []) }
            return (state.answer, state.tasks)
        }
        guard let (answer, tasks) = taken else { return }
        for task in tasks { task.cancel() }
        answer?.resume(returning: value)
    }
}
