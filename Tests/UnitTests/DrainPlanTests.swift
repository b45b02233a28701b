import Foundation
import Testing

@testable import VCModel

/// Which clusters a drain moves, suspends or refuses for, from hand-made clusters and
/// nodes; and how a migration that failed or lost its vcd is settled.
@Suite struct DrainPlanTests {
    /// 256 MiB VMs (the spec's default) on `nodes`.
    static func cluster(_ name: String, state: ClusterState = .running, nodes: [String]) -> VirtualCluster {
        NodePlanTests.cluster(name, subnet: 1, state: state, nodes: nodes)
    }

    /// n1 draining (cordoned), n2 and n3 ready with `free` MiB each before any cluster.
    static func nodes(free: Int = 4096) -> [NodeView] {
        [
            PlacementTests.node("n1", free: free, state: .cordoned), PlacementTests.node("n2", free: free),
            PlacementTests.node("n3", free: free),
        ]
    }

    @Test func onlyTheVMsOnTheNodeMoveAndSuspendedClustersStay() throws {
        let web = Self.cluster("web", nodes: ["n1", "n2", "n1"])
        let asleep = Self.cluster("asleep", state: .suspended, nodes: ["n1"])
        let elsewhere = Self.cluster("elsewhere", nodes: ["n2", "n3"])
        let actions = try DrainPlan.plan(
            node: "n1", clusters: [web, asleep, elsewhere], nodes: Self.nodes(), busy: [], force: false
        ).get()
        #expect(actions == [.migrate(cluster: "web", vms: ["web-1", "web-3"])])
    }

    /// Each cluster's moves count against the nodes for the next: two clusters that fit
    /// alone but not together refuse the drain as a whole, before anything moves.
    @Test func clustersThatFitAloneButNotTogetherRefuseTheDrain() {
        // n2 and n3 have 512 MiB each: room for two
        // 256 MiB VMs per node, four in all; a and b move three each.
        let a = Self.cluster("a", nodes: ["n1", "n1", "n1"])
        let b = Self.cluster("b", nodes: ["n1", "n1", "n1"])
        let refused = DrainPlan.plan(
            node: "n1", clusters: [a, b], nodes: Self.nodes(free: 512), busy: [], force: false)
        guard case .failure(let refusal) = refused else {
            Issue.record("the drain should be refused: \(refused)")
            return
        }
        #expect(refusal.cluster == "b")
        #expect(refusal.reason.contains("fit on no other node") && refusal.reason.contains("--force"), "\(refusal)")
        // Alone, a fits.
        #expect(
            (try? DrainPlan.plan(node: "n1", clusters: [a], nodes: Self.nodes(free: 512), busy: [], force: false).get())
                == [.migrate(cluster: "a", vms: ["a-1", "a-2", "a-3"])])
    }

    @Test func forceSuspendsTheClusterThatFitsNowhereAndSaysWhy() throws {
        let a = Self.cluster("a", nodes: ["n1", "n1", "n1"])
        let b = Self.cluster("b", nodes: ["n1", "n1", "n1"])
        let actions = try DrainPlan.plan(
            node: "n1", clusters: [a, b], nodes: Self.nodes(free: 512), busy: [], force: true
        ).get()
        #expect(actions.count == 2)
        #expect(actions.first == .migrate(cluster: "a", vms: ["a-1", "a-2", "a-3"]))
        guard case .suspend(let cluster, let reason) = actions.last else {
            Issue.record("b should be suspended: \(actions)")
            return
        }
        #expect(cluster == "b" && reason.contains("fit on no other node"))
    }

    @Test func theLastNodeThatCanHoldAClusterRefusesItsDrain() {
        let solo = Self.cluster("solo", nodes: ["n1"])
        let only = [PlacementTests.node("n1", state: .cordoned), PlacementTests.node("stor", roles: [.storage])]
        let refused = DrainPlan.plan(node: "n1", clusters: [solo], nodes: only, busy: [], force: false)
        guard case .failure(let refusal) = refused else {
            Issue.record("draining the only compute node should be refused: \(refused)")
            return
        }
        #expect(refusal.reason.contains("solo-1 of cluster 'solo' fit on no other node"), "\(refusal)")
    }

    @Test func aBusyOrFailedClusterOnTheNodeRefusesTheDrainAndOneElsewhereDoesNot() {
        let busy = Self.cluster("busy", nodes: ["n1"])
        let broken = Self.cluster("broken", state: .failed, nodes: ["n1"])
        let away = Self.cluster("away", state: .failed, nodes: ["n2"])
        for (clusters, busySet, word) in [
            ([busy], Set(["busy"]), "in progress"), ([broken], Set<String>(), "resume or destroy it first"),
        ] {
            let refused = DrainPlan.plan(
                node: "n1", clusters: clusters, nodes: Self.nodes(), busy: busySet, force: true)
            guard case .failure(let refusal) = refused else {
                Issue.record("\(clusters[0].name) should refuse the drain")
                continue
            }
            #expect(refusal.reason.contains(word), "\(refusal)")
        }
        #expect(
            (try? DrainPlan.plan(node: "n1", clusters: [away], nodes: Self.nodes(), busy: ["away"], force: false).get())
                == [])
    }

    @Test func aVMPinnedToTheDrainedNodeMovesAnyway() throws {
        var pinned = Self.cluster("pinned", nodes: ["n1"])
        pinned.spec.node = "n1"
        let actions = try DrainPlan.plan(node: "n1", clusters: [pinned], nodes: Self.nodes(), busy: [], force: false)
            .get()
        #expect(actions == [.migrate(cluster: "pinned", vms: ["pinned-1"])])
    }

    // MARK: settling a migration

    @Test func aMigrationIsSettledOnlyFromWhatTheNodesSay() {
        typealias O = MigrationOutcome
        #expect(O.decide(origin: "missing", destination: "running", originFenced: false) == .moved)
        #expect(O.decide(origin: "running", destination: "missing", originFenced: false) == .stayed)
        #expect(O.decide(origin: "running", destination: "shutoff", originFenced: false) == .stayed)
        #expect(O.decide(origin: "shutoff", destination: "shutoff", originFenced: false) == .stopped)
        // Both have a QEMU: in progress; never decided.
        if case .undecided = O.decide(origin: "running", destination: "paused", originFenced: false) {
        } else {
            Issue.record("running on both nodes must wait")
        }
        // An origin that does not answer may still run the guest, unless it was fenced.
        if case .undecided = O.decide(origin: nil, destination: "missing", originFenced: false) {
        } else {
            Issue.record("a silent origin must wait for its fencing")
        }
        #expect(O.decide(origin: nil, destination: "missing", originFenced: true) == .stopped)
        #expect(O.decide(origin: nil, destination: "running", originFenced: true) == .moved)
        if case .undecided = O.decide(origin: "missing", destination: nil, originFenced: false) {
        } else {
            Issue.record("a silent destination must wait")
        }
    }

    @Test func aMigrationWhoseOriginIsLostHasTheOriginsIncarnationFenced() {
        var web = Self.cluster("web", nodes: ["n2"])
        let origin = ClusterOperation.Origin(node: "n1", generation: 1)
        web.vms[0].generation = 2
        let migration = ClusterOperation(
            id: "m", kind: .migrate, cluster: "web", node: "n3", startedAt: Date(), vms: ["web-1"],
            origins: ["web-1": origin])
        let plan = NodeLoss.plan(
            clusters: [web], live: ["n2", "n3"], busy: ["web"], fenced: [:], migrations: [migration])
        #expect(plan.fences == [.init(node: "n1", initiators: [origin.initiator(vm: "web-1")])])
        #expect(plan.recoveries.isEmpty)
        // With the origin alive, nothing is fenced.
        let alive = NodeLoss.plan(
            clusters: [web], live: ["n1", "n2", "n3"], busy: ["web"], fenced: [:], migrations: [migration])
        #expect(alive.fences.isEmpty)
    }

    @Test func aGenerationAdmittedOnceIsNeverPlacedAgain() {
        var vm = Self.cluster("web", nodes: ["n1"]).vms[0]
        vm.generation = 3
        #expect(vm.nextGeneration == 4)
        // A migration to generation 4 failed and the VM went back to 3.
        vm.spentGeneration = 4
        #expect(vm.nextGeneration == 5)
    }
}
