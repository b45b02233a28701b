import Testing

@testable import VCModel

/// Whether a joining node takes an etcd seat, from hand-made member lists.
@Suite struct EtcdSeatTests {
    static func voters(_ names: [String], down: Set<String> = []) -> [NodeRemoval.Member] {
        names.enumerated().map { i, n in NodeRemoval.Member(id: UInt64(i + 1), name: n, healthy: !down.contains(n)) }
    }

    static func refusal(_ r: Result<EtcdSeat.Decision, EtcdSeat.Refusal>) -> String {
        if case .failure(let refusal) = r { return refusal.reason }
        return "not refused: \(r)"
    }

    @Test func threeHealthyVotersNeedNoFourth() {
        #expect(
            EtcdSeat.decide(node: "n4", members: Self.voters(["n1", "n2", "n3"])) == .success(.notNeeded(voters: 3)))
    }

    @Test func twoVotersLeftAfterARemovalTakeTheNewNodeAsALearner() {
        #expect(EtcdSeat.decide(node: "n4", members: Self.voters(["n2", "n3"])) == .success(.add(voters: 2)))
        #expect(EtcdSeat.decide(node: "n2", members: Self.voters(["n1"])) == .success(.add(voters: 1)))
    }

    @Test func aVoterThatDoesNotAnswerIsRemovedFirstAndTheRefusalSaysHow() {
        let r = EtcdSeat.decide(node: "n4", members: Self.voters(["n1", "n2", "n3"], down: ["n1"]))
        let reason = Self.refusal(r)
        #expect(reason.contains("etcd voting member n1 does not answer"))
        #expect(reason.contains("vcnode replace n1"))
    }

    @Test func aDeadVoterBesideThreeHealthyOnesDoesNotStopAJoinThatNeedsNoSeat() {
        let members = Self.voters(["n1", "n2", "n3", "n5"], down: ["n5"])
        #expect(EtcdSeat.decide(node: "n4", members: members) == .success(.notNeeded(voters: 3)))
    }

    @Test func anotherLearnerStillCatchingUpIsWaitedFor() {
        var members = Self.voters(["n2", "n3"])
        members.append(NodeRemoval.Member(id: 9, name: "n5", isLearner: true, healthy: true))
        #expect(Self.refusal(EtcdSeat.decide(node: "n4", members: members)).contains("n5 is a learner"))
    }

    @Test func aJoinRunAgainFindsItsOwnMember() {
        var members = Self.voters(["n2", "n3"])
        members.append(NodeRemoval.Member(id: 9, name: "n4", isLearner: true, healthy: false))
        #expect(EtcdSeat.decide(node: "n4", members: members) == .success(.learner(id: 9)))
        members[2].isLearner = false
        #expect(EtcdSeat.decide(node: "n4", members: members) == .success(.voting(voters: 3)))
    }

    @Test func theInitialClusterNamesEveryStartedMemberAndTheNewOne() {
        let cluster = EtcdSeat.initialCluster(
            node: "n4", peerURL: "http://10.99.0.14:2380",
            members: [
                ("n3", ["http://10.99.0.13:2380"]), ("", ["http://10.99.0.14:2380"]),
                ("n2", ["http://10.99.0.12:2380"]),
            ])
        #expect(cluster == "n2=http://10.99.0.12:2380,n3=http://10.99.0.13:2380,n4=http://10.99.0.14:2380")
    }
}

/// The cluster keeps three etcd voters by itself (`EtcdSeatKeeping`): hand-made member
/// lists and node states, no daemon.
@Suite struct EtcdSeatKeepingTests {
    typealias Candidate = EtcdSeatKeeping.Candidate
    static let grace: Duration = .seconds(60)

    static func members(healthy: [String], down: [String] = [], learners: [String] = []) -> [NodeRemoval.Member] {
        var id: UInt64 = 0
        func next() -> UInt64 {
            id += 1
            return id
        }
        return healthy.map { NodeRemoval.Member(id: next(), name: $0, healthy: true) }
            + down.map { NodeRemoval.Member(id: next(), name: $0, healthy: false) }
            + learners.map { NodeRemoval.Member(id: next(), name: $0, isLearner: true, healthy: true) }
    }

    static func nodes(_ states: [(String, NodeState)], storage: String = "st") -> [Candidate] {
        states.map { Candidate(name: $0.0, state: $0.1, roles: [.compute], hasUnderlay: true) }
            + [Candidate(name: storage, state: .ready, roles: [.storage], hasUnderlay: true)]
    }

    func step(
        _ node: String, _ members: [NodeRemoval.Member], _ nodes: [Candidate], deadFor: [String: Duration] = [:]
    ) -> EtcdSeatKeeping.Step? {
        EtcdSeatKeeping.step(node: node, members: members, nodes: nodes, deadFor: deadFor, grace: Self.grace)
    }

    @Test func aVoterDeadPastTheGraceIsReplacedByTheFirstReadyComputeNodeAlone() {
        let members = Self.members(healthy: ["n2", "n3"], down: ["n1"])
        let nodes = Self.nodes([("n1", .dead), ("n2", .ready), ("n3", .ready), ("n4", .ready), ("n5", .ready)])
        let dead: [String: Duration] = ["n1": .seconds(61)]
        #expect(step("n4", members, nodes, deadFor: dead) == .replace(dead: "n1", id: 3))
        // Every other node decides the same and leaves it to n4: no two nodes add a member.
        for other in ["n2", "n3", "n5", "st"] { #expect(step(other, members, nodes, deadFor: dead) == nil, "\(other)") }
    }

    @Test func aVoterJustDeadOrOfANodeAliveKeepsItsSeat() {
        let members = Self.members(healthy: ["n2", "n3"], down: ["n1"])
        // Within the grace (a node rebooting comes back with its member).
        #expect(step("n4", members, Self.nodes([("n1", .dead), ("n4", .ready)]), deadFor: ["n1": .seconds(59)]) == nil)
        // Its vcd is alive (etcd alone down on it, or slow): its own to restart.
        #expect(
            step("n4", members, Self.nodes([("n1", .ready), ("n4", .ready)]), deadFor: ["n1": .seconds(600)]) == nil)
        #expect(
            step("n4", members, Self.nodes([("n1", .cordoned), ("n4", .ready)]), deadFor: ["n1": .seconds(600)]) == nil)
    }

    @Test func noRemovalThatWouldCostQuorum() {
        // Three voters, two down: the one left is no quorum, and etcd takes no change anyway.
        let members = Self.members(healthy: ["n3"], down: ["n1", "n2"])
        let nodes = Self.nodes([("n1", .dead), ("n2", .dead), ("n3", .ready), ("n4", .ready)])
        #expect(step("n4", members, nodes, deadFor: ["n1": .seconds(600), "n2": .seconds(600)]) == nil)
    }

    @Test func fewerVotersThanWantedAndNoneDownTakeTheSuccessor() {
        // After a removal (or a replacement's removal whose join failed): two healthy voters.
        let members = Self.members(healthy: ["n2", "n3"])
        let nodes = Self.nodes([("n2", .ready), ("n3", .ready), ("n4", .ready)])
        #expect(step("n4", members, nodes) == .join)
        #expect(step("n3", members, nodes) == nil, "a member takes no second seat")
        #expect(step("st", members, nodes) == nil)
        // Three healthy voters: nothing to do.
        #expect(step("n4", Self.members(healthy: ["n1", "n2", "n3"]), nodes) == nil)
    }

    @Test func aLearnerCatchingUpIsLeftToFinish() {
        let members = Self.members(healthy: ["n2", "n3"], learners: ["n5"])
        #expect(step("n4", members, Self.nodes([("n2", .ready), ("n3", .ready), ("n4", .ready)])) == nil)
        // The learner's own node finishes it (a join cut off midway), so none is left for good.
        #expect(step("n5", members, Self.nodes([("n2", .ready), ("n3", .ready), ("n5", .ready)])) == .join)
    }

    @Test func theSuccessorIsReadyUncordonedReachableAndComputeBeforeStorage() {
        let cordoned = [
            Candidate(name: "n4", state: .cordoned, roles: [.compute], hasUnderlay: true),
            Candidate(name: "n5", state: .ready, roles: [.compute], hasUnderlay: false),
            Candidate(name: "a-storage", state: .ready, roles: [.storage], hasUnderlay: true),
        ]
        #expect(
            EtcdSeatKeeping.successor(nodes: cordoned, members: []) == "a-storage", "the storage node last, not never")
        let both = cordoned + [Candidate(name: "n6", state: .ready, roles: [.compute], hasUnderlay: true)]
        #expect(EtcdSeatKeeping.successor(nodes: both, members: []) == "n6")
        #expect(EtcdSeatKeeping.successor(nodes: both, members: ["n6", "a-storage"]) == nil)
    }
}
