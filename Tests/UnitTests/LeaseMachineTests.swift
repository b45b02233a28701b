import Testing

@testable import VCModel

/// The node lease as a state machine, driven with hand-made instants: it holds its lease
/// exactly as long as its own send-time arithmetic allows, self-fences a margin before the
/// lease can expire on etcd's side, and never acts under a fenced lease again.
@Suite struct LeaseMachineTests {
    typealias Instant = ContinuousClock.Instant
    typealias Directive = LeaseMachine.Directive

    static let t0 = ContinuousClock.now
    /// TTL 3 s, a renewal every 1 s, self-fence 1 s before the lease can expire, retries
    /// after 250 ms: the testbed's timers.
    static let timers = try! LeaseMachine.Timers(ttlSeconds: 3)

    static func at(_ seconds: Double) -> Instant { t0 + .milliseconds(Int64((seconds * 1000).rounded())) }
    static func at(_ seconds: Double) -> Instant? { Optional(at(seconds) as Instant) }

    /// A machine holding lease 7, granted for a request sent at `t0` and answered 50 ms later.
    static func holding() -> LeaseMachine {
        var m = LeaseMachine(timers: timers)
        _ = m.start(now: t0)
        _ = m.granted(lease: 7, ttlSeconds: 3, sentAt: t0, now: at(0.05))
        return m
    }

    static func fences(_ directives: [Directive]) -> [LeaseMachine.FenceReason] {
        directives.compactMap { if case .selfFence(_, let reason) = $0 { reason } else { nil } }
    }

    static func renewals(_ directives: [Directive]) -> [(sentAt: Instant, deadline: Instant)] {
        directives.compactMap { if case .renew(_, let sentAt, let deadline) = $0 { (sentAt, deadline) } else { nil } }
    }

    // MARK: - timers

    @Test func timersDefaultToAThirdOfTheTTLAndASecondOfMargin() throws {
        let t = try LeaseMachine.Timers(ttlSeconds: 3)
        #expect(t.renewalPeriod == .seconds(1))
        #expect(t.margin == .seconds(1))
        #expect(t.retryDelay == .milliseconds(250))
        #expect(
            try LeaseMachine.Timers(ttlSeconds: 2, renewalPeriod: .milliseconds(100)).retryDelay == .milliseconds(100))
    }

    @Test func timersThatLeaveNoRenewalBeforeTheSelfFenceAreRefused() {
        #expect(throws: ModelError.self) { try LeaseMachine.Timers(ttlSeconds: 1) }
        #expect(throws: ModelError.self) { try LeaseMachine.Timers(ttlSeconds: 3, margin: .seconds(3)) }
        #expect(throws: ModelError.self) { try LeaseMachine.Timers(ttlSeconds: 3, margin: .zero) }
        // 1 s + 2 s reaches the self-fence point: the first renewal would come too late.
        #expect(throws: ModelError.self) { try LeaseMachine.Timers(ttlSeconds: 3, margin: .seconds(2)) }
        #expect(throws: ModelError.self) {
            try LeaseMachine.Timers(ttlSeconds: 3, renewalPeriod: .seconds(1), retryDelay: .seconds(2))
        }
    }

    // MARK: - holding and renewing

    @Test func startRegistersAndAGrantHoldsTheLeaseUntilTheSelfFencePoint() {
        var m = LeaseMachine(timers: Self.timers)
        #expect(m.start(now: Self.t0) == [.register(ttlSeconds: 3, sentAt: Self.t0, fenced: nil)])
        #expect(m.lease(at: Self.t0) == nil)
        let directives = m.granted(lease: 7, ttlSeconds: 3, sentAt: Self.t0, now: Self.at(0.05))
        // Counted from the grant's send time: 0 + 3 s − 1 s.
        #expect(directives == [.hold(lease: 7, until: Self.at(2))])
        #expect(m.lease(at: Self.at(1.999)) == 7)
        #expect(m.lease(at: Self.at(2)) == nil)
        #expect(m.actUntil == Self.at(2))
        #expect(m.nextWake == Self.at(1))
    }

    @Test func renewalsOnTimeKeepTheLeaseForAsLongAsTheyLast() {
        var m = Self.holding()
        var now = Self.t0
        for _ in 0..<100 {
            let wake = m.nextWake!
            #expect(m.lease(at: wake) == 7)
            now = wake
            let sent = m.tick(now: now)
            #expect(Self.fences(sent).isEmpty)
            let renewal = Self.renewals(sent)
            #expect(renewal.count == 1)
            guard let r = renewal.first else { return }
            now = r.sentAt + .milliseconds(40)
            let answer = m.renewed(lease: 7, ttlSeconds: 3, sentAt: r.sentAt, now: now)
            #expect(answer == [.hold(lease: 7, until: r.sentAt + .seconds(2))])
        }
        #expect(now > Self.at(99))
        #expect(m.lease(at: now) == 7)
    }

    @Test func theDeadlineCountsFromTheSendTimeNotTheReply() {
        var m = Self.holding()
        let sent = Self.renewals(m.tick(now: Self.at(1)))
        #expect(sent.map(\.sentAt) == [Self.at(1)])
        // The answer took 0.9 s: the lease may have been renewed as early as 1 s.
        let answer = m.renewed(lease: 7, ttlSeconds: 3, sentAt: Self.at(1), now: Self.at(1.9))
        #expect(answer == [.hold(lease: 7, until: Self.at(3))])
        #expect(m.lease(at: Self.at(3)) == nil)
        // The next renewal is due a period after the send time, so at once here.
        #expect(m.nextWake == Self.at(2))
    }

    @Test func oneRenewalAtATimeEvenWhenTheAnswerIsSlow() {
        var m = Self.holding()
        #expect(Self.renewals(m.tick(now: Self.at(1))).count == 1)
        for ms in stride(from: 1000, to: 2000, by: 50) {
            #expect(Self.renewals(m.tick(now: Self.t0 + .milliseconds(ms))).isEmpty)
        }
        #expect(m.nextWake == Self.at(2))
    }

    // MARK: - losing the lease

    @Test func aLateAnswerAfterTheDeadlineCountsAsLost() {
        var m = Self.holding()
        _ = m.tick(now: Self.at(1))
        // Sent at 1 s and renewed on etcd, but the answer comes at the self-fence point
        // the grant set: the node has given up by then.
        let late = m.renewed(lease: 7, ttlSeconds: 3, sentAt: Self.at(1), now: Self.at(2))
        #expect(late == [.selfFence(lease: 7, reason: .notRenewedInTime)])
        #expect(m.lease(at: Self.at(2)) == nil)
        #expect(m.lease(at: Self.at(2.5)) == nil)

        var n = Self.holding()
        _ = n.tick(now: Self.at(1))
        let afterExpiry = n.renewed(lease: 7, ttlSeconds: 3, sentAt: Self.at(1), now: Self.at(3.5))
        #expect(afterExpiry == [.selfFence(lease: 7, reason: .deadlinePassed)])
    }

    @Test func failedRenewalsSelfFenceExactlyAtTheMarginBeforeTheDeadline() {
        var m = Self.holding()
        var now = Self.t0
        var attempts = 0
        var fencedAt: Instant?
        while fencedAt == nil, let wake = m.nextWake {
            now = wake
            let directives = m.tick(now: now)
            if !Self.fences(directives).isEmpty {
                #expect(Self.fences(directives) == [.notRenewedInTime])
                fencedAt = now
            }
            for r in Self.renewals(directives) {
                attempts += 1
                // Every attempt is bounded by the self-fence point the grant set.
                #expect(r.deadline == Self.at(2))
                now = r.sentAt + .milliseconds(10)
                #expect(m.renewalFailed(lease: 7, sentAt: r.sentAt, now: now).isEmpty)
            }
        }
        // The grant was sent at 0 with a 3 s TTL: etcd cannot expire it before 3 s; the
        // node gives up at 2 s, the margin before, after renewals at 1, 1.26, 1.52, 1.78.
        #expect(fencedAt == Self.at(2))
        #expect(attempts == 4)
        #expect(m.lease(at: Self.at(1.999)) == nil)
        #expect(m.state == .fencing(lease: 7, reason: .notRenewedInTime, thenStop: false))
    }

    @Test func theSelfFenceWaitsForNoTickJustBeforeThePoint() {
        var m = Self.holding()
        _ = m.tick(now: Self.at(1))
        _ = m.renewalFailed(lease: 7, sentAt: Self.at(1), now: Self.at(1.1))
        let justBefore = Self.at(2) - .nanoseconds(1)
        #expect(m.lease(at: justBefore) == 7)
        #expect(Self.fences(m.tick(now: justBefore)).isEmpty)
        #expect(m.tick(now: Self.at(2)) == [.selfFence(lease: 7, reason: .notRenewedInTime)])
    }

    @Test func aPauseLongerThanTheTTLStandsDownInsteadOfRenewing() {
        // SIGSTOP right after a renewal that succeeded, SIGCONT 10 s later: the first
        // tick sees the deadline passed and fences; it sends no renewal.
        var m = Self.holding()
        _ = m.tick(now: Self.at(1))
        _ = m.renewed(lease: 7, ttlSeconds: 3, sentAt: Self.at(1), now: Self.at(1.05))
        #expect(m.lease(at: Self.at(11)) == nil)
        let resumed = m.tick(now: Self.at(11))
        #expect(resumed == [.selfFence(lease: 7, reason: .deadlinePassed)])
        #expect(Self.renewals(resumed).isEmpty)

        // Paused with a renewal in flight: its answer, read after SIGCONT, is not believed.
        var n = Self.holding()
        _ = n.tick(now: Self.at(1))
        let answer = n.renewed(lease: 7, ttlSeconds: 3, sentAt: Self.at(1), now: Self.at(12))
        #expect(answer == [.selfFence(lease: 7, reason: .deadlinePassed)])
        #expect(n.lease(at: Self.at(12)) == nil)
    }

    @Test func etcdSayingTheLeaseIsGoneSelfFences() {
        var m = Self.holding()
        _ = m.tick(now: Self.at(1))
        #expect(
            m.renewed(lease: 7, ttlSeconds: 0, sentAt: Self.at(1), now: Self.at(1.02))
                == [.selfFence(lease: 7, reason: .leaseGone)])
        #expect(m.lease(at: Self.at(1.02)) == nil)
    }

    @Test func leaderChangeExtensionsNeverGiveTheNodeMoreTime() {
        var m = Self.holding()
        _ = m.tick(now: Self.at(1))
        // A new etcd leader gives every lease TTL + election timeout: etcd may answer 5.
        let extended = m.renewed(lease: 7, ttlSeconds: 5, sentAt: Self.at(1), now: Self.at(1.1))
        #expect(extended == [.hold(lease: 7, until: Self.at(3))])
        #expect(m.lease(at: Self.at(3)) == nil)

        // A shorter TTL than granted shortens nothing already proven and lengthens by no
        // more than it says; the next renewal then comes sooner (after the retry delay).
        _ = m.tick(now: Self.at(2))
        let shorter = m.renewed(lease: 7, ttlSeconds: 1, sentAt: Self.at(2), now: Self.at(2.1))
        #expect(shorter == [.hold(lease: 7, until: Self.at(3))])
        #expect(m.nextWake == Self.at(2.25))
        #expect(Self.renewals(m.tick(now: Self.at(2.25))).map(\.sentAt) == [Self.at(2.25)])
        let later = m.renewed(lease: 7, ttlSeconds: 2, sentAt: Self.at(2.25), now: Self.at(2.3))
        #expect(later == [.hold(lease: 7, until: Self.at(3.25))])
    }

    // MARK: - after a self-fence

    @Test func afterASelfFenceTheOldLeaseIsNeverUsedAgain() {
        var m = Self.holding()
        _ = m.tick(now: Self.at(1))
        #expect(m.tick(now: Self.at(2)) == [.selfFence(lease: 7, reason: .notRenewedInTime)])
        // The old renewal's answer comes in while the VMs are being destroyed: ignored.
        #expect(m.renewed(lease: 7, ttlSeconds: 3, sentAt: Self.at(1), now: Self.at(2.1)).isEmpty)
        #expect(m.lease(at: Self.at(2.1)) == nil)
        #expect(m.watchdogMayPing(now: Self.at(2.1), interval: .milliseconds(1)) == false)

        // Fenced: the lease is given back and the node registers anew, saying which lease
        // it fenced, so that those incarnations stay stopped.
        let after = m.fenced(now: Self.at(2.3))
        #expect(
            after == [.revoke(lease: 7), .register(ttlSeconds: 3, sentAt: Self.at(2.3), fenced: 7)])
        // A failed registration is tried again a period later, still saying so.
        #expect(m.registrationFailed(sentAt: Self.at(2.3), now: Self.at(2.4)).isEmpty)
        #expect(m.nextWake == Self.at(3.4))
        #expect(m.tick(now: Self.at(3.4)) == [.register(ttlSeconds: 3, sentAt: Self.at(3.4), fenced: 7)])
        #expect(
            m.granted(lease: 8, ttlSeconds: 3, sentAt: Self.at(3.4), now: Self.at(3.5))
                == [.hold(lease: 8, until: Self.at(5.4))])
        #expect(m.unreportedFence == nil)

        // Late news of lease 7 changes nothing.
        #expect(m.renewed(lease: 7, ttlSeconds: 3, sentAt: Self.at(1), now: Self.at(3.6)).isEmpty)
        #expect(m.renewalFailed(lease: 7, sentAt: Self.at(1), now: Self.at(3.6)).isEmpty)
        #expect(m.lease(at: Self.at(3.6)) == 8)
        #expect(m.actUntil == Self.at(5.4))
    }

    @Test func aGrantTooLateToBeOfUseIsGivenBackAndAskedAgain() {
        var m = LeaseMachine(timers: Self.timers)
        _ = m.start(now: Self.t0)
        // Sent at 0, answered at 2.5 s (a pause): its self-fence point, 2 s, is gone.
        let late = m.granted(lease: 7, ttlSeconds: 3, sentAt: Self.t0, now: Self.at(2.5))
        #expect(late == [.revoke(lease: 7), .register(ttlSeconds: 3, sentAt: Self.at(2.5), fenced: nil)])
        #expect(m.lease(at: Self.at(2.5)) == nil)
        // A grant for a registration nobody waits for any more is given back as well.
        #expect(m.granted(lease: 9, ttlSeconds: 3, sentAt: Self.t0, now: Self.at(2.6)) == [.revoke(lease: 9)])
    }

    @Test func aGrantOfMoreThanAskedIsCountedAsGranted() {
        var m = LeaseMachine(timers: Self.timers)
        _ = m.start(now: Self.t0)
        // etcd raised the TTL to its minimum: the node counts with what etcd granted.
        #expect(
            m.granted(lease: 7, ttlSeconds: 4, sentAt: Self.t0, now: Self.at(0.1)) == [
                .hold(lease: 7, until: Self.at(3))
            ])
    }

    // MARK: - stopping and the watchdog

    @Test func stoppingFencesFirstThenRevokes() {
        var m = Self.holding()
        #expect(m.stop(now: Self.at(0.5)) == [.selfFence(lease: 7, reason: .stopping)])
        #expect(m.lease(at: Self.at(0.5)) == nil)
        #expect(m.fenced(now: Self.at(0.7)) == [.revoke(lease: 7)])
        #expect(m.state == .stopped)
        #expect(m.tick(now: Self.at(10)).isEmpty)
        #expect(m.nextWake == nil)
    }

    @Test func aStopDuringASelfFenceStopsOnceItIsDone() {
        var m = Self.holding()
        _ = m.tick(now: Self.at(2))
        #expect(m.stop(now: Self.at(2.1)).isEmpty)
        #expect(m.fenced(now: Self.at(2.2)) == [.revoke(lease: 7)])
        #expect(m.state == .stopped)
    }

    @Test func aStopWhileRegisteringGivesTheGrantBackWhenItLands() {
        var m = LeaseMachine(timers: Self.timers)
        _ = m.start(now: Self.t0)
        #expect(m.stop(now: Self.at(0.1)).isEmpty)
        #expect(m.granted(lease: 7, ttlSeconds: 3, sentAt: Self.t0, now: Self.at(0.2)) == [.revoke(lease: 7)])
        #expect(m.lease(at: Self.at(0.2)) == nil)
    }

    @Test func theWatchdogIsPingedOnlyWhileItWouldFireBeforeTheSelfFence() {
        let m = Self.holding()
        // Held until 2 s: a 1.5 s watchdog may be pinged until 0.5 s.
        #expect(m.watchdogMayPing(now: Self.at(0.5), interval: .milliseconds(1500)))
        #expect(!m.watchdogMayPing(now: Self.at(0.501), interval: .milliseconds(1500)))
        // vcd.service's 30 s would never be pinged at a 3 s TTL.
        #expect(!m.watchdogMayPing(now: Self.t0, interval: .seconds(30)))
        var waiting = LeaseMachine(timers: Self.timers)
        _ = waiting.start(now: Self.t0)
        _ = waiting.registrationFailed(sentAt: Self.t0, now: Self.at(0.1))
        #expect(waiting.watchdogMayPing(now: Self.at(0.1), interval: .seconds(30)))
    }

    // MARK: - against a simulated etcd

    /// Thousands of renewals against an etcd that takes each one some time after it was
    /// sent, answers late or not at all, changes leader (every lease extended, answers
    /// overstating the TTL) and a shell that is paused for up to 6 s: at no instant does
    /// the machine offer a lease within the margin of its expiry on etcd, and no renewal
    /// is bounded past that point.
    @Test func noLeaseIsEverOfferedWithinTheMarginOfItsExpiryOnEtcd() {
        var random = SplitMix64(seed: 0x5eed)
        var checked = 0
        for _ in 0..<40 {
            var sim = Simulation(machine: LeaseMachine(timers: Self.timers), now: Self.t0)
            sim.run(until: Self.at(300), random: &random) { at, machine, expiry in
                checked += 1
                if let lease = machine.lease(at: at) {
                    #expect(at + Self.timers.margin <= (expiry[lease] ?? Self.t0))
                }
            } renewal: { renewal, expiry in
                #expect(renewal.deadline > renewal.sentAt)
                #expect(renewal.deadline + Self.timers.margin <= (expiry[renewal.lease] ?? Self.t0))
            }
            #expect(sim.fences > 0)
            #expect(sim.renewalsHeld > 0)
        }
        #expect(checked > 10_000)
    }
}

/// A small, seeded random source: the same runs every time.
struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Milliseconds in `range`.
    mutating func ms(_ range: ClosedRange<Int64>) -> Duration {
        .milliseconds(range.lowerBound + Int64(next() % UInt64(range.upperBound - range.lowerBound + 1)))
    }
    mutating func chance(_ percent: UInt64) -> Bool { next() % 100 < percent }
}

/// An etcd as the node cannot see it and a shell that carries the machine's directives
/// out: requests are taken by etcd some time after they are sent and answered later, or
/// lost; leaders change; the shell is paused now and then.
struct Simulation {
    typealias Instant = ContinuousClock.Instant

    enum Happening {
        /// etcd takes a keep-alive of `lease`; the answer reaches the node at `answer`.
        case keepAlive(lease: Int64, sentAt: Instant, answer: Instant, deadline: Instant, overstate: Bool)
        /// etcd takes a grant; the answer reaches the node at `answer`.
        case grant(sentAt: Instant, answer: Instant)
        /// A new etcd leader: every lease lives its TTL again plus an election timeout.
        case leaderChange
        case report(Report)
    }

    enum Report {
        case granted(lease: Int64, sentAt: Instant)
        case registrationFailed(sentAt: Instant)
        case renewed(lease: Int64, ttl: Int, sentAt: Instant)
        case renewalFailed(lease: Int64, sentAt: Instant)
        case fenced
    }

    var machine: LeaseMachine
    var now: Instant
    /// The instant each lease expires on etcd's side; a lease past it is gone.
    var expiry: [Int64: Instant] = [:]
    var queue: [(at: Instant, what: Happening)] = []
    var pausedUntil: Instant?
    var nextLease: Int64 = 100
    var fences = 0
    var renewalsHeld = 0
    let ttl = Duration.seconds(3)

    typealias RenewalSent = (lease: Int64, sentAt: Instant, deadline: Instant)

    mutating func run(
        until end: Instant, random: inout SplitMix64, check: (Instant, LeaseMachine, [Int64: Instant]) -> Void,
        renewal: (RenewalSent, [Int64: Instant]) -> Void
    ) {
        carryOut(machine.start(now: now), random: &random, renewal: renewal)
        while now < end {
            if random.chance(2) { queue.append((now + random.ms(0...3000), .leaderChange)) }
            if (pausedUntil ?? now) <= now, random.chance(1) { pausedUntil = now + random.ms(500...6000) }
            // A paused shell neither ticks nor reads answers: both wait for SIGCONT.
            var wake = machine.nextWake
            if let w = wake, let p = pausedUntil, p > now { wake = max(w, p) }
            let soonest = queue.indices.min { queue[$0].at < queue[$1].at }
            let next = [wake, soonest.map { queue[$0].at }].compactMap { $0 }.min() ?? now + .seconds(1)
            // Just before anything happens, the lease the machine would offer.
            check(max(now, next - .nanoseconds(1)), machine, expiry)
            now = max(now, next)
            if let i = soonest, queue[i].at <= now {
                let (_, what) = queue.remove(at: i)
                if case .report = what, let p = pausedUntil, p > now {
                    queue.append((p, what))
                    continue
                }
                happen(what, random: &random, renewal: renewal)
            } else if let w = wake, now >= w {
                carryOut(machine.tick(now: now), random: &random, renewal: renewal)
            }
            check(now, machine, expiry)
        }
    }

    /// etcd's side happens at its own instant; a report is the shell handing the machine
    /// an event.
    mutating func happen(_ what: Happening, random: inout SplitMix64, renewal: (RenewalSent, [Int64: Instant]) -> Void)
    {
        switch what {
        case .leaderChange:
            for (lease, at) in expiry where at > now { expiry[lease] = now + ttl + .seconds(2) }
        case .grant(let sentAt, let answer):
            let lease = nextLease
            nextLease += 1
            expiry[lease] = now + ttl
            queue.append((answer, .report(.granted(lease: lease, sentAt: sentAt))))
        case .keepAlive(let lease, let sentAt, let answer, let deadline, let overstate):
            let alive = (expiry[lease] ?? now) > now
            if alive { expiry[lease] = max(expiry[lease]!, now + ttl) }
            let left = alive ? (overstate ? 5 : 3) : 0
            // The shell's request ends at its deadline: an answer after it is a failure.
            let report: Report =
                answer <= deadline
                ? .renewed(lease: lease, ttl: left, sentAt: sentAt) : .renewalFailed(lease: lease, sentAt: sentAt)
            queue.append((max(now, min(answer, deadline)), .report(report)))
        case .report(let report):
            let directives: [LeaseMachine.Directive]
            switch report {
            case .granted(let lease, let sentAt):
                directives = machine.granted(lease: lease, ttlSeconds: 3, sentAt: sentAt, now: now)
            case .registrationFailed(let sentAt):
                directives = machine.registrationFailed(sentAt: sentAt, now: now)
            case .renewed(let lease, let ttl, let sentAt):
                directives = machine.renewed(lease: lease, ttlSeconds: ttl, sentAt: sentAt, now: now)
            case .renewalFailed(let lease, let sentAt):
                directives = machine.renewalFailed(lease: lease, sentAt: sentAt, now: now)
            case .fenced:
                directives = machine.fenced(now: now)
            }
            carryOut(directives, random: &random, renewal: renewal)
        }
    }

    mutating func carryOut(
        _ directives: [LeaseMachine.Directive], random: inout SplitMix64,
        renewal: (RenewalSent, [Int64: Instant]) -> Void
    ) {
        for directive in directives {
            switch directive {
            case .register(_, let sentAt, _):
                if random.chance(20) {
                    queue.append((now + random.ms(1...1000), .report(.registrationFailed(sentAt: sentAt))))
                } else {
                    let taken = now + random.ms(0...400)
                    queue.append((taken, .grant(sentAt: sentAt, answer: taken + random.ms(0...400))))
                }
            case .hold:
                renewalsHeld += 1
            case .renew(let lease, let sentAt, let deadline):
                renewal((lease, sentAt, deadline), expiry)
                if random.chance(15) {
                    // Lost before etcd saw it.
                    queue.append(
                        (
                            min(deadline, now + random.ms(0...2000)),
                            .report(.renewalFailed(lease: lease, sentAt: sentAt))
                        ))
                } else {
                    let taken = now + random.ms(0...700)
                    let answer = taken + random.ms(0...700)
                    queue.append(
                        (
                            taken,
                            .keepAlive(
                                lease: lease, sentAt: sentAt, answer: answer, deadline: deadline,
                                overstate: random.chance(30))
                        ))
                }
            case .selfFence:
                fences += 1
                queue.append((now + random.ms(0...300), .report(.fenced)))
            case .revoke(let lease):
                expiry[lease] = nil
            }
        }
    }
}
