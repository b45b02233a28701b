import Foundation
import Testing

@testable import VCModel

@Suite struct NodeLossTests {
    static func cluster(_ name: String, state: ClusterState = .running, nodes: [String]) -> VirtualCluster {
        NodePlanTests.cluster(name, subnet: 1, state: state, nodes: nodes)
    }

    static func fenced(_ node: String, _ vms: [VirtualMachine]) -> [String: NodeLoss.Fenced] {
        [node: NodeLoss.Fenced(node: node, initiators: Set(vms.map(\.initiator)), by: "n1", at: Date())]
    }

    @Test func aDeadNodesRunningIncarnationsAreFencedBeforeAnythingMoves() {
        let web = Self.cluster("web", nodes: ["n1", "n2", "n2"])
        let plan = NodeLoss.plan(clusters: [web], live: ["n1", "n3"], busy: [], fenced: [:])
        #expect(plan.fences == [.init(node: "n2", initiators: [web.vms[1].initiator, web.vms[2].initiator].sorted())])
        #expect(plan.recoveries.isEmpty)
    }

    @Test func onceFencedTheClusterIsRecoveredWithExactlyThoseVMs() {
        let web = Self.cluster("web", nodes: ["n1", "n2", "n2"])
        let fenced = Self.fenced("n2", [web.vms[1], web.vms[2]])
        let plan = NodeLoss.plan(clusters: [web], live: ["n1", "n3"], busy: [], fenced: fenced)
        #expect(plan.fences.isEmpty)
        #expect(plan.recoveries == [.init(cluster: "web", vms: ["web-2", "web-3"])])
        #expect(NodeLoss.names(fenced) == [web.vms[1].initiator, web.vms[2].initiator])
    }

    @Test func aNodeBackBeforeTheRecoveryStillHasItsFencedVMsPlacedAnew() {
        let web = Self.cluster("web", nodes: ["n1", "n2"])
        let plan = NodeLoss.plan(
            clusters: [web], live: ["n1", "n2"], busy: [], fenced: Self.fenced("n2", [web.vms[1]]))
        #expect(plan.recoveries == [.init(cluster: "web", vms: ["web-2"])])
    }

    @Test func aRecoveredVMHasANewNameAndNeedsNothingMore() {
        var web = Self.cluster("web", nodes: ["n1", "n2"])
        let fenced = Self.fenced("n2", [web.vms[1]])
        web.vms[1].node = "n3"
        web.vms[1].generation += 1
        let plan = NodeLoss.plan(clusters: [web], live: ["n1", "n3"], busy: [], fenced: fenced)
        #expect(plan.fences.isEmpty && plan.recoveries.isEmpty)
    }

    @Test func suspendedClustersAreLeftAloneAndBusyOnesFencedButNotRecovered() {
        let asleep = Self.cluster("asleep", state: .suspended, nodes: ["n2"])
        let busy = Self.cluster("busy", state: .creating, nodes: ["n2"])
        var plan = NodeLoss.plan(clusters: [asleep, busy], live: ["n1"], busy: ["busy"], fenced: [:])
        #expect(plan.fences == [.init(node: "n2", initiators: [busy.vms[0].initiator])])
        plan = NodeLoss.plan(
            clusters: [asleep, busy], live: ["n1"], busy: ["busy"], fenced: Self.fenced("n2", busy.vms))
        #expect(plan.fences.isEmpty && plan.recoveries.isEmpty)
    }

    @Test func aClusterWithOneVMStillUnfencedWaitsForIt() {
        let web = Self.cluster("web", nodes: ["n2", "n3"])
        let plan = NodeLoss.plan(clusters: [web], live: ["n1"], busy: [], fenced: Self.fenced("n2", [web.vms[0]]))
        #expect(plan.fences == [.init(node: "n3", initiators: [web.vms[1].initiator])])
        #expect(plan.recoveries.isEmpty)
    }

    /// A failed cluster is fenced like any other but left to its administrator: its resume
    /// places the fenced VMs anew.
    @Test func aFailedClusterIsFencedButNotRecoveredByItself() {
        let broken = Self.cluster("broken", state: .failed, nodes: ["n1", "n2"])
        var plan = NodeLoss.plan(clusters: [broken], live: ["n1"], busy: [], fenced: [:])
        #expect(plan.fences.map(\.node) == ["n2"])
        plan = NodeLoss.plan(clusters: [broken], live: ["n1"], busy: [], fenced: Self.fenced("n2", [broken.vms[1]]))
        #expect(plan.fences.isEmpty && plan.recoveries.isEmpty)
    }
}
