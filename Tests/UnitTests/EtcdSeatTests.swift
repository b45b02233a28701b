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
