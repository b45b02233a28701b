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

    /// A stopping vcd cancels its lease's requests: it must not wait out their bounds.
    @Test func aCancelledCallerIsAnsweredAtOnceAndTheWorkIsCancelled() async {
        let started = ContinuousClock.now
        let (cancelled, saw) = AsyncStream.makeStream(of: Bool.self)
        let caller = Task {
            await within(.seconds(30)) { () async -> Int? in
                try? await Task.sleep(for: .seconds(30))
                saw.yield(Task.isCancelled)
                return 1
            }
        }
        try? await Task.sleep(for: .milliseconds(50))
        caller.cancel()
        #expect(await caller.value == nil)
        #expect(ContinuousClock.now - started < .seconds(5))
        var seen = cancelled.makeAsyncIterator()
        #expect(await seen.next() == true)
    }
}
