import Testing

@testable import VCDaemon

/// The lease as the rest of vcd sees it: held until a margin before it can have expired,
/// dropped at that instant whatever a renewal in flight answers later.
@Suite struct HeldLeaseTests {
    @Test func aLeaseIsDroppedAtItsDeadlineNotBefore() async {
        let lease = HeldLease()
        let start = ContinuousClock.now
        await lease.held(7, until: start + .seconds(2))
        #expect(await lease.expire(now: start + .milliseconds(1999)) == false)
        #expect(await lease.id == 7)
        #expect(await lease.expire(now: start + .seconds(2)) == true)
        #expect(await lease.id == nil)
        #expect(await lease.until == nil)
        // Dropped once: nothing more to take off.
        #expect(await lease.expire(now: start + .seconds(3)) == false)
    }

    @Test func aLateRenewalDoesNotExtendALeaseWhoseTimeIsUp() async {
        let lease = HeldLease()
        let sent = ContinuousClock.now
        // The answer to a keep-alive sent at `sent` arrives 5 s later: counted from `sent`.
        await lease.held(7, until: sent + .seconds(3) - NodeLease.margin)
        #expect(await lease.expire(now: sent + .seconds(5)) == true)
    }

    @Test func losingTheLeaseClearsItsDeadline() async {
        let lease = HeldLease()
        await lease.held(7, until: .now + .seconds(10))
        await lease.set(nil)
        #expect(await lease.id == nil)
        #expect(await lease.until == nil)
    }
}
