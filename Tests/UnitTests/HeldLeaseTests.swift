import Testing

@testable import VCDaemon

/// The lease as the rest of vcd sees it: held until a margin before it can have expired,
/// not offered past that instant whatever a renewal in flight answers later.
@Suite struct HeldLeaseTests {
    @Test func aLeaseIsNotActedUnderPastItsSelfFencePointEvenBeforeTheMachineSaysSo() async throws {
        let lease = HeldLease()
        await lease.held(7, until: .now + .milliseconds(200))
        #expect(await lease.id == 7)
        try await Task.sleep(for: .milliseconds(250))
        #expect(await lease.id == nil)
        await lease.held(7, until: .now - .seconds(1))
        #expect(await lease.id == nil)
    }

    @Test func droppingTheLeaseClearsItsDeadline() async {
        let lease = HeldLease()
        await lease.held(7, until: .now + .seconds(10))
        await lease.drop(8)
        #expect(await lease.id == 7)
        await lease.drop(7)
        #expect(await lease.id == nil)
        #expect(await lease.until == nil)
        await lease.held(9, until: .now + .seconds(10))
        await lease.drop()
        #expect(await lease.until == nil)
    }
}
