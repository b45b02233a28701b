import Testing

@testable import VCModel

/// When `vcnode remove` may take a node out, and what it does to etcd's members, from
/// hand-made clusters and member lists.
@Suite struct NodeRemovalTests {
    static func summary(_ name: String, state: ClusterState = .running, nodes: [String]) -> ClusterSummary {
        ClusterSummary(NodePlanTests.cluster(name, subnet: 1, state: state, nodes: nodes))
    }

    /// Three voting members, n1..n3, healthy unless named in `down`.
    static func members(down: Set<String> = []) -> [NodeRemoval.Member] {
        (1...3).map { NodeRemoval.Member(id: UInt64($0), name: "n\($0)", healthy: !down.contains("n\($0)")) }
    }

    static func plan(
        _ node: String, state: NodeState? = .cordoned, clusters: [ClusterSummary] = [], busy: Set<String> = [],
        coordinating: [String] = [], members: [NodeRemoval.Member] = members()
    ) -> Result<NodeRemoval.Plan, NodeRemoval.Refusal> {
        NodeRemoval.plan(
            node: node, state: state, known: ["n1", "n2", "n3", "n4"], clusters: clusters, busy: busy,
            coordinating: coordinating, members: members)
    }

    static func refusal(_ r: Result<NodeRemoval.Plan, NodeRemoval.Refusal>) -> String {
        if case .failure(let refusal) = r { return refusal.reason }
        return "not refused: \(r)"
    }

    @Test func aDrainedMemberGoesWithItsEtcdMemberAndTheRestKeepQuorum() throws {
        let plan = try Self.plan("n2", clusters: [Self.summary("web", nodes: ["n1", "n3"])]).get()
        #expect(plan.member?.id == 2)
        #expect(plan.votersLeft == 2 && plan.healthyVotersLeft == 2)
    }

    @Test func aNodeWithoutAnEtcdMemberRemovesNoMember() throws {
        let plan = try Self.plan("n4", state: .dead).get()
        #expect(plan.member == nil)
        #expect(plan.votersLeft == 3 && plan.healthyVotersLeft == 3)
    }

    @Test func aReadyNodeMustBeDrainedFirst() {
        let why = Self.refusal(Self.plan("n2", state: .ready))
        #expect(why.contains("is ready") && why.contains("vcnode drain n2"), "\(why)")
    }

    @Test func anUnknownNodeIsNamedWithTheKnownOnes() {
        let why = Self.refusal(Self.plan("n9", state: nil))
        #expect(why == "no node named 'n9'; known nodes: n1, n2, n3, n4")
    }

    /// VMs of a running or failed cluster still placed there refuse it; a suspended
    /// cluster's old placement does not (its resume places it on ready nodes).
    @Test func placedVMsRefuseItButASuspendedClusterDoesNot() {
        let why = Self.refusal(Self.plan("n2", clusters: [Self.summary("web", nodes: ["n2", "n1", "n2"])]))
        #expect(why.contains("2 VM(s) placed on it (web-1, web-3)") && why.contains("vcnode drain n2"), "\(why)")
        let dead = Self.refusal(
            Self.plan("n2", state: .dead, clusters: [Self.summary("db", state: .failed, nodes: ["n2"])]))
        #expect(dead.contains("1 VM(s) placed on it") && dead.contains("started elsewhere"), "\(dead)")
        let asleep = Self.plan("n2", clusters: [Self.summary("web", state: .suspended, nodes: ["n2", "n2"])])
        #expect((try? asleep.get()) != nil, "\(asleep)")
    }

    @Test func anOperationOnTheNodeRefusesIt() {
        let busy = Self.refusal(Self.plan("n2", clusters: [Self.summary("web", nodes: ["n2"])], busy: ["web"]))
        #expect(busy.contains("operation in progress") && busy.contains("web"), "\(busy)")
        let coordinating = Self.refusal(Self.plan("n2", state: .dead, coordinating: ["db"]))
        #expect(coordinating.contains("coordinates an operation on cluster 'db'"), "\(coordinating)")
        // A migration places its VMs on the destination when it begins: the origin looks
        // empty, and still runs them.
        let moving = NodeRemoval.plan(
            node: "n2", state: .cordoned, known: ["n1", "n2"], clusters: [Self.summary("web", nodes: ["n1"])],
            busy: ["web"], coordinating: [], migratingFrom: ["web"], members: Self.members())
        #expect(Self.refusal(moving).contains("cluster 'web' are moving off n2"), "\(moving)")
    }

    /// With n1's member down, removing healthy n2 would leave n3 alone of two voters: refused,
    /// naming n1. Removing the dead n1 itself leaves two healthy of two: allowed.
    @Test func aRemovalThatWouldLoseQuorumIsRefusedAndTheDeadMemberGoesFirst() throws {
        let members = Self.members(down: ["n1"])
        let why = Self.refusal(Self.plan("n2", members: members))
        #expect(
            why.contains("1 healthy of 2 voting members, below a quorum of 2")
                && why.contains("bring n1 back or remove it first"), "\(why)")
        let plan = try Self.plan("n1", state: .dead, members: members).get()
        #expect(plan.member?.id == 1 && plan.votersLeft == 2 && plan.healthyVotersLeft == 2)
    }

    /// The storage node holds every disk and image: it goes only when there are none.
    @Test func theStorageNodeGoesOnlyWhenItHoldsNothing() throws {
        let summary = Self.summary("web", nodes: ["n1"])
        let why = Self.refusal(
            NodeRemoval.plan(
                node: "stor", state: .cordoned, known: ["stor"], clusters: [summary], busy: [], coordinating: [],
                members: Self.members(), storage: true, images: ["tiny"]))
        #expect(why.contains("storage node and holds the disks of 1 cluster(s) and 1 image(s)"), "\(why)")
        let empty = NodeRemoval.plan(
            node: "stor", state: .dead, known: ["stor"], clusters: [], busy: [], coordinating: [],
            members: Self.members(), storage: true)
        #expect(try empty.get().member == nil)
    }

    @Test func aLearnerGoesWithoutCountingAndTheLastVoterStays() throws {
        var members = Self.members(down: ["n1", "n3"])
        members.append(NodeRemoval.Member(id: 4, name: "n4", isLearner: true, healthy: true))
        // n4 is a learner: removing it costs no vote, even without a quorum of healthy voters.
        #expect(try Self.plan("n4", members: members).get().member?.id == 4)
        let only = [NodeRemoval.Member(id: 1, name: "n1", healthy: true)]
        #expect(Self.refusal(Self.plan("n1", members: only)).contains("etcd's only voting member"))
    }
}
