import Testing

@testable import VCDaemon

/// An administrator's operation must not fail at random because the reconciler happened
/// to be repairing the cluster, and must never run beside another operation.
@Suite struct ClusterLocksTests {
    @Test func operationWaitsForARepairPassAndThenRuns() async throws {
        let locks = ClusterLocks()
        #expect(await locks.tryLock("c", as: .repair))
        let operation = Task { try await locks.lockForOperation("c", patience: .seconds(30)) }
        try await Task.sleep(for: .milliseconds(50))
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

/// "Does it fit" and "commit it" must not interleave between two admissions.
@Suite struct AdmissionGateTests {
    actor Overlap {
        var inside = 0
        var most = 0
        func enter() {
            inside += 1
            most = max(most, inside)
        }
        func leave() { inside -= 1 }
    }

    @Test func admissionsNeverOverlapAndAFailureFreesTheGate() async throws {
        let gate = AdmissionGate()
        let overlap = Overlap()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    try await gate.admit { () async throws in
                        await overlap.enter()
                        try await Task.sleep(for: .milliseconds(5))
                        await overlap.leave()
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(await overlap.most == 1)

        struct Refused: Error {}
        await #expect(throws: Refused.self) { try await gate.admit { () async throws(Refused) in throw Refused() } }
        #expect(await gate.admit { 42 } == 42)
    }
}
