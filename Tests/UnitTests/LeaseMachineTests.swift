import Testing

@testable import VCModel

/// The node lease as a state machine, driven with hand-made instants: it holds its lease
/// exactly as long as its own send-time arithmetic allows, lapses a margin before the lease
/// can expire on etcd's side, self-fences when etcd or the other nodes say the lease is
/// gone, and never acts under a fenced lease again.
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

    static func lapses(_ directives: [Directive]) -> [LeaseMachine.FenceReason] {
        directives.compactMap { if case .lapse(_, let reason) = $0 { reason } else { nil } }
    }

    static func asks(_ directives: [Directive]) -> [Instant] {
        directives.compactMap { if case .askWitnesses(_, let sentAt) = $0 { sentAt } else { nil } }
    }

    static let stop = SelfFence.Verdict.stop("its lease has expired")
    static let keep = SelfFence.Verdict.keepRunning("its lease still has 1 s left")

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

    @Test func aLateAnswerCountsFromItsSendTimeAndIsLostWhenThatIsPast() {
        var m = Self.holding()
        _ = m.tick(now: Self.at(1))
        // Sent at 1 s and renewed on etcd, answered at the self-fence point the grant set:
        // the lease lives at least until 4 s, so it is held until 3 s.
        let late = m.renewed(lease: 7, ttlSeconds: 3, sentAt: Self.at(1), now: Self.at(2))
        #expect(late.first == .hold(lease: 7, until: Self.at(3)))
        #expect(m.lease(at: Self.at(2.5)) == 7)

        // Answered at 3.5 s: what it proves is past its own self-fence point. The node
        // lapses (acts under the lease no more) and asks the other nodes.
        var n = Self.holding()
        _ = n.tick(now: Self.at(1))
        let afterExpiry = n.renewed(lease: 7, ttlSeconds: 3, sentAt: Self.at(1), now: Self.at(3.5))
        #expect(
            afterExpiry == [.lapse(lease: 7, reason: .notRenewedInTime), .askWitnesses(lease: 7, sentAt: Self.at(3.5))])
        #expect(n.lease(at: Self.at(3.5)) == nil)
    }

    @Test func failedRenewalsLapseExactlyAtTheMarginBeforeTheDeadline() {
        var m = Self.holding()
        var now = Self.t0
        var attempts = 0
        var asked: [Instant] = []
        var lapsedAt: Instant?
        while lapsedAt == nil, let wake = m.nextWake {
            now = wake
            var directives = m.tick(now: now)
            while !directives.isEmpty {
                let d = directives.removeFirst()
                switch d {
                case .lapse(_, let reason):
                    #expect(reason == .notRenewedInTime)
                    lapsedAt = now
                case .renew(_, let sentAt, let deadline) where lapsedAt == nil:
                    attempts += 1
                    // Every attempt is bounded by the self-fence point the grant set.
                    #expect(deadline == Self.at(2))
                    now = sentAt + .milliseconds(10)
                    directives += m.renewalFailed(lease: 7, sentAt: sentAt, now: now)
                case .askWitnesses(_, let sentAt) where lapsedAt == nil:
                    asked.append(sentAt)
                    now = sentAt + .milliseconds(5)
                    directives += m.witnessed(lease: 7, verdict: Self.keep, sentAt: sentAt, now: now)
                case .selfFence:
                    Issue.record("self-fenced while the other nodes say the lease lives")
                default:
                    break
                }
            }
        }
        // The grant was sent at 0 with a 3 s TTL: etcd cannot expire it before 3 s; the
        // node gives up at 2 s, the margin before, after renewals at 1, 1.26, 1.52, 1.78.
        // The other nodes were asked from 1.25 s (a renewal 250 ms late), every 250 ms.
        #expect(lapsedAt == Self.at(2))
        #expect(attempts == 4)
        #expect(asked == [Self.at(1.25), Self.at(1.5), Self.at(1.75)])
        #expect(m.lease(at: Self.at(1.999)) == nil)
        guard case .lapsed(_, reason: .notRenewedInTime) = m.state else {
            Issue.record("not lapsed: \(m.state)")
            return
        }
        #expect(m.watchdogMayPing)
    }

    @Test func lapsedTheVMsStopOnlyWhenTheOthersSayTheLeaseIsGone() {
        var m = Self.holding()
        _ = m.tick(now: Self.at(1))
        _ = m.renewalFailed(lease: 7, sentAt: Self.at(1), now: Self.at(1.1))
        // No tick between 1.1 s and 2 s (a loaded host): the lapse asks at once.
        let lapse = m.tick(now: Self.at(2))
        #expect(Self.lapses(lapse) == [.notRenewedInTime])
        #expect(Self.asks(lapse) == [Self.at(2)])
        #expect(Self.fences(lapse).isEmpty)
        // "Keep running" (etcd has no quorum anywhere, or the lease still has time):
        // asked again 250 ms after the last question, renewals go on, nothing is stopped.
        #expect(Self.fences(m.witnessed(lease: 7, verdict: Self.keep, sentAt: Self.at(2), now: Self.at(2.1))).isEmpty)
        let again = m.tick(now: Self.at(2.25))
        #expect(Self.asks(again) == [Self.at(2.25)])
        #expect(Self.fences(again).isEmpty)
        #expect(m.verdict == Self.keep)
        // "Stop": every VM is destroyed.
        #expect(
            m.witnessed(lease: 7, verdict: Self.stop, sentAt: Self.at(2.25), now: Self.at(2.3))
                == [.selfFence(lease: 7, reason: .notRenewedInTime)])
        #expect(m.state == .fencing(lease: 7, reason: .notRenewedInTime, thenStop: false))
        #expect(!m.watchdogMayPing)
    }

    /// A live node that found this one lost says so before it starts its VMs elsewhere:
    /// lapsed, the node self-fences at once; holding, it cannot have been lost, and the
    /// word (stale, or about a registration it replaced) changes nothing.
    @Test func toldLostByALiveNodeALapsedNodeSelfFencesAndAHoldingOneDoesNot() {
        var holding = Self.holding()
        #expect(Self.fences(holding.toldLost(now: Self.at(0.5))).isEmpty)
        #expect(holding.lease(at: Self.at(0.5)) == 7)

        var m = Self.holding()
        _ = m.tick(now: Self.at(1))
        _ = m.renewalFailed(lease: 7, sentAt: Self.at(1), now: Self.at(1.1))
        #expect(Self.lapses(m.tick(now: Self.at(2))) == [.notRenewedInTime])
        #expect(m.toldLost(now: Self.at(2.1)) == [.selfFence(lease: 7, reason: .notRenewedInTime)])
        #expect(m.state == .fencing(lease: 7, reason: .notRenewedInTime, thenStop: false))
        #expect(Self.fences(m.toldLost(now: Self.at(2.2))).isEmpty, "one self-fence, not two")
    }

    @Test func aRenewalThatSucceedsAfterTheLapseHoldsTheLeaseAgain() {
        // An etcd election longer than the margin: renewals fail past the lapse, then one
        // sent at 2.5 s succeeds. The lease never expired (etcd renewed it), so nobody moved
        // the VMs: the node holds it again, until 2.5 + 3 − 1 s.
        var m = Self.holding()
        _ = m.tick(now: Self.at(1))
        _ = m.renewalFailed(lease: 7, sentAt: Self.at(1), now: Self.at(1.1))
        // Lapsed, renewals go on, each bounded by a renewal period: no time is left to
        // bound it by.
        let first = Self.renewals(m.tick(now: Self.at(2)))
        #expect(first.map(\.sentAt) == [Self.at(2)] && first.map(\.deadline) == [Self.at(3)])
        #expect(m.lease(at: Self.at(2)) == nil)
        _ = m.renewalFailed(lease: 7, sentAt: Self.at(2), now: Self.at(2.25))
        let renewal = Self.renewals(m.tick(now: Self.at(2.5)))
        #expect(renewal.map(\.sentAt) == [Self.at(2.5)])
        let back = m.renewed(lease: 7, ttlSeconds: 3, sentAt: Self.at(2.5), now: Self.at(2.6))
        #expect(back == [.hold(lease: 7, until: Self.at(4.5))])
        #expect(m.lease(at: Self.at(2.6)) == 7)
        // The question still in flight is of no use any more: its answer is ignored.
        #expect(m.witnessed(lease: 7, verdict: Self.stop, sentAt: Self.at(2.25), now: Self.at(2.7)).isEmpty)
        #expect(m.lease(at: Self.at(2.7)) == 7)
    }

    @Test func aStopHeardJustBeforeTheLapseStopsTheVMsAtTheLapse() {
        // Cut off from everyone: the question asked at 1.25 s (a renewal late) finds no
        // other node; at the lapse the VMs stop at once, without another question.
        var m = Self.holding()
        _ = m.tick(now: Self.at(1))
        #expect(Self.asks(m.tick(now: Self.at(1.25))) == [Self.at(1.25)])
        let silent = SelfFence.Verdict.stop("no other node answers: this node may be the one cut off")
        #expect(Self.fences(m.witnessed(lease: 7, verdict: silent, sentAt: Self.at(1.25), now: Self.at(1.9))).isEmpty)
        // Still held: nothing stops before the lapse.
        #expect(m.lease(at: Self.at(1.9)) == 7)
        #expect(
            m.tick(now: Self.at(2))
                == [.lapse(lease: 7, reason: .notRenewedInTime), .selfFence(lease: 7, reason: .notRenewedInTime)])

        // Paused from 1.3 s to 2.9 s: the stop heard at 1.3 s is too old to act on; the
        // other nodes are asked again.
        var n = Self.holding()
        _ = n.tick(now: Self.at(1))
        _ = n.tick(now: Self.at(1.25))
        _ = n.witnessed(lease: 7, verdict: silent, sentAt: Self.at(1.25), now: Self.at(1.3))
        let late = n.tick(now: Self.at(2.9))
        #expect(Self.lapses(late) == [.notRenewedInTime])
        #expect(Self.fences(late).isEmpty)
        #expect(Self.asks(late) == [Self.at(2.9)])
    }

    @Test func theSelfFenceWaitsForNoTickJustBeforeThePoint() {
        var m = Self.holding()
        _ = m.tick(now: Self.at(1))
        _ = m.renewalFailed(lease: 7, sentAt: Self.at(1), now: Self.at(1.1))
        let justBefore = Self.at(2) - .nanoseconds(1)
        #expect(m.lease(at: justBefore) == 7)
        #expect(Self.lapses(m.tick(now: justBefore)).isEmpty)
        #expect(m.tick(now: Self.at(2)) == [.lapse(lease: 7, reason: .notRenewedInTime)])
    }

    @Test func aPauseLongerThanTheTTLStandsDown() {
        // SIGSTOP right after a renewal that succeeded, SIGCONT 10 s later: the first
        // tick sees the deadline passed and acts under the lease no more. The keep-alive it
        // sends finds the lease gone (its VMs were moved meanwhile): every VM stops.
        var m = Self.holding()
        _ = m.tick(now: Self.at(1))
        _ = m.renewed(lease: 7, ttlSeconds: 3, sentAt: Self.at(1), now: Self.at(1.05))
        #expect(m.lease(at: Self.at(11)) == nil)
        let resumed = m.tick(now: Self.at(11))
        #expect(Self.lapses(resumed) == [.deadlinePassed])
        #expect(Self.renewals(resumed).map(\.sentAt) == [Self.at(11)])
        #expect(
            m.renewed(lease: 7, ttlSeconds: 0, sentAt: Self.at(11), now: Self.at(11.01))
                == [.selfFence(lease: 7, reason: .leaseGone)])

        // Paused with a renewal in flight: its answer, read after SIGCONT, proves nothing
        // left: lapsed, the deadline passed.
        var n = Self.holding()
        _ = n.tick(now: Self.at(1))
        let answer = n.renewed(lease: 7, ttlSeconds: 3, sentAt: Self.at(1), now: Self.at(12))
        #expect(Self.lapses(answer) == [.deadlinePassed])
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
        #expect(
            m.tick(now: Self.at(2))
                == [.lapse(lease: 7, reason: .notRenewedInTime), .askWitnesses(lease: 7, sentAt: Self.at(2))])
        #expect(
            m.witnessed(lease: 7, verdict: Self.stop, sentAt: Self.at(2), now: Self.at(2.05))
                == [.selfFence(lease: 7, reason: .notRenewedInTime)])
        // The old renewal's answer comes in while the VMs are being destroyed: ignored.
        #expect(m.renewed(lease: 7, ttlSeconds: 3, sentAt: Self.at(1), now: Self.at(2.1)).isEmpty)
        #expect(m.lease(at: Self.at(2.1)) == nil)
        #expect(m.watchdogMayPing == false)

        // Fenced: the node registers anew, saying which lease it fenced (the shell revokes
        // it first), so that those incarnations are seen gone.
        let after = m.fenced(now: Self.at(2.3))
        #expect(after == [.register(ttlSeconds: 3, sentAt: Self.at(2.3), fenced: 7)])
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

    @Test func stoppingFencesFirstThenRevokesWhenOthersWouldTakeTheVMsOver() {
        var m = Self.holding()
        #expect(m.stop(now: Self.at(0.5), othersMayTakeOver: true) == [.selfFence(lease: 7, reason: .stopping)])
        #expect(m.lease(at: Self.at(0.5)) == nil)
        #expect(m.fenced(now: Self.at(0.7)) == [.revoke(lease: 7)])
        #expect(m.state == .stopped)
        #expect(m.tick(now: Self.at(10)).isEmpty)
        #expect(m.nextWake == nil)

        // Alone, nobody would start them elsewhere: they run on for the next vcd.
        var alone = Self.holding()
        #expect(alone.stop(now: Self.at(0.5), othersMayTakeOver: false) == [.revoke(lease: 7)])
        #expect(alone.state == .stopped)
    }

    @Test func aStopDuringASelfFenceStopsOnceItIsDone() {
        var m = Self.holding()
        _ = m.tick(now: Self.at(2))
        _ = m.witnessed(lease: 7, verdict: Self.stop, sentAt: Self.at(2), now: Self.at(2.05))
        #expect(m.stop(now: Self.at(2.1), othersMayTakeOver: true).isEmpty)
        #expect(m.fenced(now: Self.at(2.2)) == [.revoke(lease: 7)])
        #expect(m.state == .stopped)
    }

    @Test func aStopWhileRegisteringGivesTheGrantBackWhenItLands() {
        var m = LeaseMachine(timers: Self.timers)
        _ = m.start(now: Self.t0)
        #expect(m.stop(now: Self.at(0.1), othersMayTakeOver: true).isEmpty)
        #expect(m.granted(lease: 7, ttlSeconds: 3, sentAt: Self.t0, now: Self.at(0.2)) == [.revoke(lease: 7)])
        #expect(m.lease(at: Self.at(0.2)) == nil)
    }

    @Test func theWatchdogIsPingedButWhileASelfFenceIsUnderWay() {
        var m = Self.holding()
        #expect(m.watchdogMayPing)
        _ = m.tick(now: Self.at(2))
        // Lapsed: the VMs may be meant to keep running (no quorum anywhere).
        #expect(m.watchdogMayPing)
        _ = m.witnessed(lease: 7, verdict: Self.stop, sentAt: Self.at(2), now: Self.at(2.05))
        #expect(!m.watchdogMayPing)
        _ = m.fenced(now: Self.at(2.2))
        #expect(m.watchdogMayPing)
    }

    // MARK: - against a simulated etcd

    /// Thousands of renewals against an etcd that takes each one some time after it was
    /// sent, answers late or not at all, changes leader (every lease extended, answers
    /// overstating the TTL), other nodes that answer within 300 ms, and a shell that is
    /// paused for up to 6 s: at no instant does the machine offer a lease within the margin
    /// of its expiry on etcd, no renewal made under a held lease is bounded past that
    /// point, and the VMs stop within 650 ms of their lease's expiry (of the shell's
    /// resuming, if it was paused then), never later.
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
            #expect(sim.lapses > sim.fences)
            #expect(sim.vmsRunningPastExpiry == 0)
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
        case witnessed(lease: Int64, sentAt: Instant)
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
    var lapses = 0
    var renewalsHeld = 0
    /// The lease the node's VMs were started under, while they run.
    var vmsUnder: Int64?
    var pauseEnded: Instant?
    /// Instants at which VMs ran longer than 650 ms after their lease expired (not counting
    /// a pause of the shell).
    var vmsRunningPastExpiry = 0
    let ttl = Duration.seconds(3)

    typealias RenewalSent = (lease: Int64, sentAt: Instant, deadline: Instant)

    mutating func run(
        until end: Instant, random: inout SplitMix64, check: (Instant, LeaseMachine, [Int64: Instant]) -> Void,
        renewal: (RenewalSent, [Int64: Instant]) -> Void
    ) {
        carryOut(machine.start(now: now), random: &random, renewal: renewal)
        while now < end {
            if random.chance(2) { queue.append((now + random.ms(0...3000), .leaderChange)) }
            if (pausedUntil ?? now) <= now, random.chance(1) {
                pausedUntil = now + random.ms(500...6000)
                pauseEnded = pausedUntil
            }
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
            if let lease = vmsUnder, let expired = expiry[lease], (pausedUntil ?? now) <= now,
                now - max(expired, pauseEnded ?? expired) > .milliseconds(650)
            {
                vmsRunningPastExpiry += 1
            }
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
            case .witnessed(let lease, let sentAt):
                // The other nodes ask etcd's leader: gone is gone.
                let alive = (expiry[lease] ?? now) > now
                let verdict: SelfFence.Verdict = alive ? .keepRunning("time left") : .stop("expired")
                directives = machine.witnessed(lease: lease, verdict: verdict, sentAt: sentAt, now: now)
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
            case .hold(let lease, _):
                renewalsHeld += 1
                if vmsUnder == nil { vmsUnder = lease }
            case .renew(let lease, let sentAt, let deadline):
                if case .holding = machine.state { renewal((lease, sentAt, deadline), expiry) }
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
                vmsUnder = nil
                queue.append((now + random.ms(0...300), .report(.fenced)))
            case .lapse:
                lapses += 1
            case .askWitnesses(let lease, let sentAt):
                queue.append((now + random.ms(0...300), .report(.witnessed(lease: lease, sentAt: sentAt))))
            case .revoke(let lease):
                expiry[lease] = nil
            }
        }
    }
}
