import Testing

@testable import VCDaemon

@Suite struct WithinTests {
    @Test func aSlowAnswerIsGivenUpAtTheBound() async {
        let started = ContinuousClock.now
        let value = await within(.milliseconds(100)) { () async -> Int? in
            try? await Task.sleep(for: .seconds(5))
            return 1
        }
        #expect(value == nil)
        #expect(ContinuousClock.now - started < .seconds(2))
    }

    @Test func aQuickAnswerIsGiven() async {
        #expect(await within(.seconds(5)) { () async -> Int? in 7 } == 7)
    }
}
