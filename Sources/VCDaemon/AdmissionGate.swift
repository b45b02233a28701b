/// Serializes admission on this node: checking that a cluster's memory fits and recording
/// the cluster as committed happen as one step, so that two creates (or resumes) arriving
/// together cannot both fit into the same free memory. Waiters are served in order. The
/// section it guards is a few catalog reads and one transaction, milliseconds long.
public actor AdmissionGate {
    private var busy = false
    private var queue: [CheckedContinuation<Void, Never>] = []

    public init() {}

    /// Runs `body` with no other admission on this node running at the same time.
    public nonisolated func admit<T: Sendable, E: Error>(
        _ body: () async throws(E) -> T
    ) async throws(E) -> T {
        await enter()
        do {
            let value = try await body()
            await leave()
            return value
        } catch {
            await leave()
            throw error
        }
    }

    private func enter() async {
        guard busy else {
            busy = true
            return
        }
        await withCheckedContinuation { queue.append($0) }
    }

    private func leave() {
        if queue.isEmpty {
            busy = false
        } else {
            // The lock passes straight to the next waiter.
            queue.removeFirst().resume()
        }
    }
}
