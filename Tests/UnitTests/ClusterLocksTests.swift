import Testing

@testable import VCDaemon

/// An administrator's operation must not fail at random because the reconciler happened
/// to be repairing the cluster, and must never run beside another operation.
@Suite struct ClusterLocksTests {
    @Test func operationWaitsForARepairPassAndThenRuns() async throws {
        let locks = ClusterLocks()
        #expect(await locks.tryLock("c", as: .repair))
        let operation = Task { try await locks.lockForOperation("c", patience: .seconds(30)) }
        while await locks.waiting(for: "c") == 0 { await Task.yield() }
        await locks.unlock("c")
        try await operation.value
        // The operation holds it now: neither a repair nor another operation gets in.
        #expect(await !locks.tryLock("c", as: .repair))
        await #expect(throws: ClusterLocks.Refusal.busy) {
            try await locks.lockForOperation("c", patience: .seconds(30))
        }
    }

    @Test func operationIsRefusedAtOnceWhenAnotherOperationHoldsTheCluster() async {
        let locks = ClusterLocks()
        #expect(await locks.tryLock("c", as: .operation))
        await #expect(throws: ClusterLocks.Refusal.busy) {
            try await locks.lockForOperation("c", patience: .seconds(30))
        }
    }

    @Test func operationGivesUpOnARepairThatTakesTooLong() async throws {
        let locks = ClusterLocks()
        #expect(await locks.tryLock("c", as: .repair))
        await #expect(throws: ClusterLocks.Refusal.repairTooLong) {
            try await locks.lockForOperation("c", patience: .milliseconds(100))
        }
        // Giving up leaves the repair's lock alone, and its end frees the cluster.
        #expect(await locks.isLocked("c"))
        await locks.unlock("c")
        try await locks.lockForOperation("c", patience: .zero)
        #expect(await !locks.tryLock("c", as: .repair))
    }
}
