import AsyncHTTPClient
import NIOCore
import Testing

@testable import VCCatalog
@testable import VCDaemon

/// Which etcd member a request goes to, for how long, and the one line a person reads
/// when none served it; decided by value, without etcd.
@Suite struct EtcdFailoverUnitTests {
    static let members = ["http://a:2379", "http://b:2379", "http://c:2379"]
    static let start = ContinuousClock.now

    static func round(
        _ endpoints: [String] = members, preferred: Int = 0, timeout: Duration = .seconds(5),
        resendingLostReplies: Bool = true
    ) -> EndpointFailover {
        EndpointFailover(
            endpoints: endpoints, preferred: preferred, deadline: start + timeout,
            resendingLostReplies: resendingLostReplies)
    }

    /// The next attempt as a value the expectation macros can compare.
    static func next(_ round: inout EndpointFailover, _ now: ContinuousClock.Instant) -> Attempt? {
        round.next(now: now).map { Attempt(member: $0.member, timeout: $0.timeout) }
    }

    struct Attempt: Equatable {
        var member: Int
        var timeout: Duration
    }

    @Test func thePreferredMemberComesFirstThenTheOthersInTheirOrderAfterIt() {
        #expect(EndpointFailover.order(count: 3, preferred: 0) == [0, 1, 2])
        #expect(EndpointFailover.order(count: 3, preferred: 1) == [1, 2, 0])
        #expect(EndpointFailover.order(count: 3, preferred: 2) == [2, 0, 1])
        #expect(EndpointFailover.order(count: 1, preferred: 0) == [0])
    }

    @Test func aPreferenceOutsideTheListStartsAtTheFirstMember() {
        #expect(EndpointFailover.order(count: 2, preferred: 5) == [0, 1])
        #expect(EndpointFailover.order(count: 0, preferred: 0) == [])
    }

    @Test func eachMemberIsTriedAtMostOncePerRequest() {
        var round = Self.round(preferred: 1)
        var tried: [Int] = []
        while let attempt = round.next(now: Self.start) {
            tried.append(attempt.member)
            round.failed(.notConnected(reason: "connection refused"))
        }
        #expect(tried == [1, 2, 0])
    }

    @Test func oneMemberGetsTheWholeTimeout() {
        var round = Self.round(["http://a:2379"])
        #expect(Self.next(&round, Self.start)?.timeout == .seconds(5))
        round.failed(.notConnected(reason: "connection refused"))
        #expect(Self.next(&round, Self.start) == nil)
    }

    @Test func membersStillToTryShareTheTimeAndTheLastGetsWhatIsLeft() throws {
        var round = Self.round()
        let first = try #require(Self.next(&round, Self.start))
        #expect(first.timeout == .seconds(5) / 3)
        round.failed(.noReply(reason: "no answer"))
        // The first one hung for its whole share; the second may not take more than 2 s.
        let second = try #require(Self.next(&round, Self.start + first.timeout))
        #expect(second.timeout == min((.seconds(5) - first.timeout) / 2, EndpointFailover.memberTimeout))
        round.failed(.noReply(reason: "no answer"))
        let third = try #require(Self.next(&round, Self.start + first.timeout + second.timeout))
        #expect(third.timeout == .seconds(5) - first.timeout - second.timeout)
    }

    @Test func aMemberThatIsNotTheLastNeverTakesMoreThanTheMemberTimeout() {
        var round = Self.round(timeout: .seconds(30))
        #expect(Self.next(&round, Self.start)?.timeout == EndpointFailover.memberTimeout)
    }

    @Test func aRefusedMemberLeavesTheRestOfTheTimeToTheOthers() {
        var round = Self.round()
        _ = round.next(now: Self.start)
        round.failed(.notConnected(reason: "connection refused"))
        #expect(Self.next(&round, Self.start + .milliseconds(2))?.timeout == EndpointFailover.memberTimeout)
    }

    @Test func noMemberIsTriedOnceTheTimeIsUp() {
        var round = Self.round()
        _ = round.next(now: Self.start)
        round.failed(.noReply(reason: "no answer within 1.6 s"))
        #expect(Self.next(&round, Self.start + .seconds(5)) == nil)
        #expect(
            round.error.description
                == "the catalog has no quorum: 1 of 3 etcd members can be reached (http://a:2379: no answer within 1.6 s; http://b:2379: not tried, no time left; http://c:2379: not tried, no time left); running VMs keep running; start the members again"
        )
    }

    @Test func aLeaseGrantWhoseReplyWasLostIsNotSentToAnotherMember() {
        var round = Self.round(resendingLostReplies: false)
        _ = round.next(now: Self.start)
        round.failed(.noReply(reason: "no answer within 1.6 s"))
        #expect(Self.next(&round, Self.start + .seconds(2)) == nil)
        #expect(
            round.error.description
                == "the catalog (etcd at http://a:2379) is not reachable: no answer within 1.6 s; start etcd (scripts/daemons.sh start)"
        )
    }

    @Test func aLeaseGrantIsSentToTheNextMemberWhenTheFirstIsDownOrRefuses() {
        var round = Self.round(resendingLostReplies: false)
        _ = round.next(now: Self.start)
        round.failed(.notConnected(reason: "connection refused"))
        #expect(Self.next(&round, Self.start)?.member == 1)
        round.failed(.refused(status: 503, message: "etcdserver: no leader"))
        #expect(Self.next(&round, Self.start)?.member == 2)
    }

    @Test func oneMemberFailsWithItsOwnErrorAsBefore() {
        var round = Self.round(["http://a:2379"])
        _ = round.next(now: Self.start)
        round.failed(.refused(status: 503, message: "etcdserver: no leader"))
        guard case .rejected(let endpoint, let status, let message) = round.error else {
            Issue.record("expected .rejected, got \(round.error)")
            return
        }
        #expect(endpoint == "http://a:2379" && status == 503 && message == "etcdserver: no leader")
    }

    @Test func withOneMemberUpTheLineSaysThereIsNoQuorumAndHowManyAnswer() {
        var round = Self.round(preferred: 1)
        while round.next(now: Self.start) != nil {
            round.failed(
                round.failures.count == 1
                    ? .noReply(reason: "no answer within 2.0 s") : .notConnected(reason: "connection refused"))
        }
        let error = round.error
        #expect(
            error.description
                == "the catalog has no quorum: 1 of 3 etcd members can be reached (http://b:2379: connection refused; http://c:2379: no answer within 2.0 s; http://a:2379: connection refused); running VMs keep running; start the members again"
        )
        #expect(error.isRetryable)
        guard case .noQuorum(1, 3, _) = error else {
            Issue.record("expected .noQuorum(1, 3, …), got \(error)")
            return
        }
    }

    @Test func withAMajorityUpButNoLeaderTheLineSaysToRetry() {
        var round = Self.round()
        while round.next(now: Self.start) != nil {
            round.failed(.refused(status: 503, message: "etcdserver: no leader"))
        }
        #expect(
            round.error.description
                == "the catalog has no quorum at the moment: 3 of 3 etcd members can be reached but none served the request (http://a:2379: etcdserver: no leader; http://b:2379: etcdserver: no leader; http://c:2379: etcdserver: no leader); they may be electing a leader: retry shortly"
        )
    }

    @Test func withNoMemberUpTheLineNamesEveryMember() {
        var round = Self.round()
        while round.next(now: Self.start) != nil {
            round.failed(.notConnected(reason: "connection refused"))
        }
        #expect(
            round.error.description
                == "the catalog (etcd at http://a:2379, http://b:2379, http://c:2379) is not reachable: http://a:2379: connection refused; http://b:2379: connection refused; http://c:2379: connection refused; start etcd (scripts/daemons.sh start)"
        )
    }

    @Test func aConnectionNeverMadeIsToldFromALostReply() {
        let budget = Duration.milliseconds(1700)
        #expect(
            EndpointFailover.outcome(of: HTTPClientError.connectTimeout, budget: budget)
                == .notConnected(reason: "no connection within the connect timeout"))
        #expect(
            EndpointFailover.outcome(of: HTTPClientError.deadlineExceeded, budget: budget)
                == .noReply(reason: "no answer within 1.7 s"))
        #expect(
            EndpointFailover.outcome(of: HTTPClientError.remoteConnectionClosed, budget: budget)
                == .noReply(reason: "the connection closed before the answer"))
        #expect(
            EndpointFailover.outcome(of: ChannelError.ioOnClosedChannel, budget: budget)
                == .notConnected(reason: "the connection was closed"))
        #expect(
            EndpointFailover.outcome(of: HTTPClientError.readTimeout, budget: budget)
                == .noReply(reason: "\(HTTPClientError.readTimeout)"))
    }

    @Test func aClosedPortIsRefusedAtOnceAndNamedSo() async throws {
        let client = EtcdClient(endpoints: ["http://127.0.0.1:1", "http://127.0.0.1:2"])
        let started = ContinuousClock.now
        let error = await #expect(throws: CatalogError.self) { _ = try await client.get("k") }
        #expect(ContinuousClock.now - started < .milliseconds(500))
        guard case .unreachable(let endpoint, let reason) = error else {
            Issue.record("expected .unreachable, got \(String(describing: error))")
            return
        }
        #expect(endpoint == "http://127.0.0.1:1, http://127.0.0.1:2")
        #expect(reason == "http://127.0.0.1:1: connection refused; http://127.0.0.1:2: connection refused")
    }

    @Test func theClientKeepsItsOneEndpointInitialiser() {
        let client = EtcdClient(endpoint: "http://127.0.0.1:2379/")
        #expect(client.endpoint == "http://127.0.0.1:2379")
        #expect(client.endpoints == ["http://127.0.0.1:2379"])
    }

    @Test func noQuorumIsUnavailableForTheAPI() {
        let error = DaemonError.from(CatalogError.noQuorum(answered: 1, of: 3, reasons: "x"))
        #expect(error.code == "unavailable" && error.httpStatus == 503)
    }

    @Test func durationsAreWrittenInTenthsOfASecond() {
        #expect(EndpointFailover.seconds(.milliseconds(1666)) == "1.6 s")
        #expect(EndpointFailover.seconds(.seconds(5)) == "5.0 s")
        #expect(EndpointFailover.seconds(.milliseconds(40)) == "0.0 s")
    }

    static func member(_ name: String, _ url: String, learner: Bool = false) -> EtcdClient.Member {
        EtcdClient.Member(id: 1, name: name, clientURLs: [url], peerURLs: [], isLearner: learner)
    }

    @Test func theClientFollowsTheVotingMembersEtcdListsOnceItsOwnIsAmongThem() {
        let client = EtcdClient(endpoints: ["http://b:2379", "http://x:2379"])
        let listed = [
            Self.member("c", "http://c:2379"), Self.member("b", "http://b:2379/"), Self.member("d", "http://d:2379"),
            Self.member("e", "http://e:2379", learner: true), Self.member("", "http://f:2379"),
        ]
        #expect(client.follow(members: listed))
        // x was removed; d joined; e is a learner, f not started: neither serves.
        #expect(client.endpoints == ["http://b:2379", "http://c:2379", "http://d:2379"])
        #expect(client.endpoint == "http://b:2379", "the member that answered stays first")
        #expect(!client.follow(members: listed), "nothing changed")
    }

    @Test func membersAdvertisingURLsThisClientDoesNotUseAreNotFollowed() {
        // One member advertising localhost while vcd was given 127.0.0.1: kept as configured.
        let client = EtcdClient(endpoints: ["http://127.0.0.1:2379"])
        #expect(!client.follow(members: [Self.member("default", "http://localhost:2379")]))
        #expect(client.endpoints == ["http://127.0.0.1:2379"])
    }
}
