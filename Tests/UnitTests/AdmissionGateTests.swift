import Testing

@testable import VCDaemon

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
