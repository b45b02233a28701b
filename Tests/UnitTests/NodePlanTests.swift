import Foundation
import Testing

@testable import VCModel

@Suite struct NodePlanTests {
    static let pool = "/srv/pool"
    static let underlays = ["n1": "192.168.0.1", "n2": "192.168.0.2", "n3": "192.168.0.3", "s": "192.168.0.9"]

    /// A cluster on subnet `subnet` whose VM i runs on `nodes[i - 1]`.
    static func cluster(
        _ name: String, subnet: Int, state: ClusterState = .running, nodes: [String], generation: Int = 1
    ) -> VirtualCluster {
        let spec = ClusterSpec(name: name, image: "tiny", vms: nodes.count)
        var cluster = ClusterLayout.make(
            spec: spec, subnet: subnet, node: "", addresses: try! AddressPlan(), now: Date(timeIntervalSince1970: 0))
        for i in cluster.vms.indices {
            cluster.vms[i].node = nodes[i]
            cluster.vms[i].generation = generation
        }
        cluster.state = state
        return cluster
    }

    static func world(
        _ node: String, roles: [NodeRole] = [.compute], clusters: [VirtualCluster], busy: Set<String> = [],
        closed: Set<String> = []
    ) -> DesiredWorld {
        DesiredWorld(
            node: node, roles: roles, clusters: clusters, busy: busy, underlays: underlays,
            withSecrets: Set(clusters.map(\.name)).subtracting(closed), poolRoot: pool)
    }

    static func perform(_ cluster: String, _ steps: Step...) -> [Repair] {
        steps.map { .perform(cluster: cluster, step: $0) }
    }

    static func startChain(_ cluster: String, _ vm: String) -> [Repair] {
        perform(cluster, .secret(vm: vm), .define(vm: vm), .start(vm: vm), .release(vm: vm))
    }

    /// What the node holds once `world` is fully made on it.
    static func made(_ world: DesiredWorld) -> ObservedNode {
        var (observed, world) = (ObservedNode(), world)
        apply(NodePlan.plan(desired: world, observed: observed), to: &observed, world: &world)
        return observed
    }

    /// Carries repairs out on a hand-made node, as the daemon's shell would.
    static func apply(_ repairs: [Repair], to observed: inout ObservedNode, world: inout DesiredWorld) {
        for repair in repairs {
            switch repair {
            case .perform(let name, let step):
                guard let c = world.clusters.firstIndex(where: { $0.name == name }) else {
                    Issue.record("no cluster \(name) for \(repair)")
                    continue
                }
                let cluster = world.clusters[c]
                let bridge = cluster.network.bridge
                let vm = step.vm.flatMap { v in cluster.vms.first { $0.name == v } }
                let domain = step.vm.flatMap { v in observed.domains.firstIndex { $0.name == v } }
                switch step {
                case .firewall:
                    observed.firewallTables.insert(GuestBoundary.table(bridge: bridge))
                    observed.currentFirewalls.insert(bridge)
                case .bridge: observed.bridges.insert(bridge)
                case .dhcp: observed.dhcp.insert(bridge)
                case .overlay:
                    let peers = Set(
                        cluster.vms.map(\.node).filter { $0 != world.node }.compactMap { world.underlays[$0] })
                    let name = Naming.overlay(bridge: bridge)
                    observed.overlays.removeAll { $0.name == name }
                    observed.overlays.append(.init(name: name, vni: cluster.network.vni, peers: peers))
                case .export:
                    observed.targets.removeAll { $0.iqn == vm!.diskIQN }
                    observed.targets.append(
                        .init(
                            iqn: vm!.diskIQN, initiators: [vm!.initiator], account: Naming.chapUser(vm: vm!.name),
                            file: "\(world.poolRoot)/\(vm!.diskFile)"))
                case .secret: break
                case .define:
                    #expect(domain == nil, "\(repair) over an existing domain")
                    observed.domains.append(
                        .init(name: vm!.name, cluster: name, active: false, initiator: vm!.initiator))
                case .start:
                    observed.domains[domain!].active = true
                    observed.domains[domain!].paused = true
                case .release: observed.domains[domain!].paused = false
                default: Issue.record("a plan never asks for \(repair)")
                }
            case .removeDomain(let name): observed.domains.removeAll { $0.name == name }
            case .removeTarget(let iqn): observed.targets.removeAll { $0.iqn == iqn }
            case .removeBridge(let name): observed.bridges.remove(name)
            case .removeOverlay(let name): observed.overlays.removeAll { $0.name == name }
            case .removeFirewall(let bridge):
                observed.firewallTables.remove(GuestBoundary.table(bridge: bridge))
                observed.currentFirewalls.remove(bridge)
            case .stopDHCP(let bridge):
                observed.dhcp.remove(bridge)
                observed.dhcpFiles.remove(bridge)
            case .close(let name):
                for i in world.clusters.indices where world.clusters[i].name == name {
                    world.clusters[i].state = .failed
                }
            }
        }
    }

    /// Plans, checks the plan names each repair once, applies it and plans again: [].
    @discardableResult
    static func settles(
        _ world: DesiredWorld, from observed: ObservedNode, sourceLocation: SourceLocation = #_sourceLocation
    ) -> [Repair] {
        var (world, observed) = (world, observed)
        let repairs = NodePlan.plan(desired: world, observed: observed)
        #expect(Set(repairs).count == repairs.count, "a repair twice in \(repairs)", sourceLocation: sourceLocation)
        apply(repairs, to: &observed, world: &world)
        let again = NodePlan.plan(desired: world, observed: observed)
        #expect(again == [], "not idempotent after \(repairs)", sourceLocation: sourceLocation)
        return repairs
    }

    // MARK: empty and settled

    @Test func anEmptyWorldOnAnEmptyNodeNeedsNothing() {
        for roles: [NodeRole] in [[.compute], [.storage], [.compute, .storage], [.etcd]] {
            #expect(
                NodePlan.plan(desired: Self.world("n1", roles: roles, clusters: []), observed: ObservedNode()) == [])
        }
    }

    @Test func aNodeThatHoldsItsShareNeedsNothing() {
        let demo = Self.cluster("demo", subnet: 1, nodes: ["n1", "n2", "n1"])
        for (node, roles) in [("n1", [NodeRole.compute]), ("n2", [.compute]), ("s", [.storage])] {
            let world = Self.world(node, roles: roles, clusters: [demo])
            #expect(NodePlan.plan(desired: world, observed: Self.made(world)) == [])
        }
    }

    // MARK: a running cluster over three nodes

    @Test func aRunningClusterSpreadOverThreeNodesFromEachNodesPointOfView() {
        let demo = Self.cluster("demo", subnet: 3, nodes: ["n1", "n2", "n3", "n1", "n2", "n3"])
        for (node, vms) in [
            ("n1", ["demo-1", "demo-4"]), ("n2", ["demo-2", "demo-5"]), ("n3", ["demo-3", "demo-6"]),
        ] {
            let world = Self.world(node, clusters: [demo])
            let repairs = Self.settles(world, from: ObservedNode())
            #expect(
                repairs
                    == Self.perform("demo", .firewall, .bridge, .overlay, .dhcp)
                    + vms.flatMap { Self.startChain("demo", $0) })
            let peers = Set(Self.underlays.filter { $0.key != node && $0.key != "s" }.values)
            #expect(Self.made(world).overlays == [.init(name: "vcbr3x", vni: 7703, peers: peers)])
        }
        let storage = Self.settles(Self.world("s", roles: [.storage], clusters: [demo]), from: ObservedNode())
        #expect(storage == demo.vms.flatMap { Self.perform("demo", .export(vm: $0.name)) })
    }

    @Test func aComputeAndStorageNodeExportsEveryDiskAndRunsOnlyItsVMs() {
        let demo = Self.cluster("demo", subnet: 3, nodes: ["n1", "n2"])
        let repairs = Self.settles(
            Self.world("n1", roles: [.compute, .storage], clusters: [demo]), from: ObservedNode())
        #expect(
            repairs
                == Self.perform("demo", .firewall, .bridge, .overlay, .dhcp)
                + Self.perform("demo", .export(vm: "demo-1"), .export(vm: "demo-2")) + Self.startChain("demo", "demo-1")
        )
    }

    @Test func aClusterOnOneNodeHasNoOverlayAndLosesAStaleOne() {
        let solo = Self.cluster("solo", subnet: 4, nodes: ["n1", "n1"])
        let world = Self.world("n1", clusters: [solo])
        #expect(!Self.settles(world, from: ObservedNode()).contains(.perform(cluster: "solo", step: .overlay)))
        var observed = Self.made(world)
        observed.overlays = [.init(name: "vcbr4x", vni: 7704, peers: ["192.168.0.2"])]
        #expect(Self.settles(world, from: observed) == [.removeOverlay(name: "vcbr4x")])
    }

    @Test func anOverlayWithOtherPeersOrAnotherVNIIsMadeAgain() {
        let demo = Self.cluster("demo", subnet: 3, nodes: ["n1", "n2", "n3"])
        let world = Self.world("n1", clusters: [demo])
        for stale in [
            ObservedNode.Overlay(name: "vcbr3x", vni: 7703, peers: ["192.168.0.2"]),
            .init(name: "vcbr3x", vni: 7703, peers: ["192.168.0.2", "192.168.0.3", "192.168.0.7"]),
            .init(name: "vcbr3x", vni: 9, peers: ["192.168.0.2", "192.168.0.3"]),
        ] {
            var observed = Self.made(world)
            observed.overlays = [stale]
            #expect(Self.settles(world, from: observed) == Self.perform("demo", .overlay))
        }
    }

    @Test func aMissingOrStaleBoundaryBridgeOrDHCPIsMadeAgain() {
        let demo = Self.cluster("demo", subnet: 3, nodes: ["n1"])
        let world = Self.world("n1", clusters: [demo])
        var observed = Self.made(world)
        observed.currentFirewalls = []
        #expect(Self.settles(world, from: observed) == Self.perform("demo", .firewall))
        observed = Self.made(world)
        observed.bridges = []
        observed.dhcp = []
        #expect(Self.settles(world, from: observed) == Self.perform("demo", .bridge, .dhcp))
    }

    // MARK: domains

    @Test func eachDomainIsBroughtToRunningFromWhereItIs() {
        let demo = Self.cluster("demo", subnet: 3, nodes: ["n1", "n1", "n1", "n1"])
        let world = Self.world("n1", clusters: [demo])
        var observed = Self.made(world)
        let initiator = { (i: Int) in demo.vms[i].initiator }
        observed.domains = [
            .init(name: "demo-1", cluster: "demo", active: true, paused: false, initiator: initiator(0)),
            .init(name: "demo-2", cluster: "demo", active: true, paused: true, initiator: initiator(1)),
            .init(name: "demo-3", cluster: "demo", active: false, initiator: initiator(2)),
        ]
        #expect(
            Self.settles(world, from: observed)
                == Self.perform("demo", .release(vm: "demo-2"), .start(vm: "demo-3"), .release(vm: "demo-3"))
                + Self.startChain("demo", "demo-4"))
    }

    @Test func aDomainOfAnotherIncarnationIsMadeAgainNotStarted() {
        let demo = Self.cluster("demo", subnet: 3, nodes: ["n1"], generation: 3)
        let world = Self.world("n1", clusters: [demo])
        var observed = Self.made(world)
        let old = Naming.initiatorIQN(node: "n1", vm: "demo-1", generation: 1)
        observed.domains = [.init(name: "demo-1", cluster: "demo", active: false, initiator: old)]
        #expect(
            Self.settles(world, from: observed) == [.removeDomain(name: "demo-1")] + Self.startChain("demo", "demo-1"))
    }

    @Test func aNodeThatCameBackAfterItsVMsWentElsewhereRemovesThemAndStartsNothing() {
        // n1 ran demo-1 and demo-3; while it was away they were placed on n2 and n3.
        let before = Self.cluster("demo", subnet: 3, nodes: ["n1", "n2", "n1"])
        let observed = Self.made(Self.world("n1", clusters: [before]))
        let after = Self.cluster("demo", subnet: 3, nodes: ["n2", "n2", "n3"], generation: 2)
        let repairs = Self.settles(Self.world("n1", clusters: [after]), from: observed)
        #expect(
            repairs == [
                .removeDomain(name: "demo-1"), .removeDomain(name: "demo-3"), .stopDHCP(bridge: "vcbr3"),
                .removeOverlay(name: "vcbr3x"), .removeBridge(name: "vcbr3"), .removeFirewall(bridge: "vcbr3"),
            ])
    }

    @Test func aDomainWhoseMetadataNamesAnotherClusterIsNotTheVMsDomain() {
        let demo = Self.cluster("demo", subnet: 3, nodes: ["n1"])
        let world = Self.world("n1", clusters: [demo])
        var observed = Self.made(world)
        observed.domains = [.init(name: "demo-1", cluster: "other", active: true)]
        #expect(
            Self.settles(world, from: observed) == [.removeDomain(name: "demo-1")] + Self.startChain("demo", "demo-1"))
    }

    // MARK: busy clusters

    @Test func aBusyClusterIsNotTouched() {
        let busy = Self.cluster("busy", subnet: 5, nodes: ["n2", "n2"], generation: 2)
        // What n1 holds of it: its network, a domain of a VM that moved, one the record
        // does not name yet, and on the storage side a target bound to an old incarnation.
        let observed = ObservedNode(
            domains: [
                .init(name: "busy-1", cluster: "busy", active: true),
                .init(name: "busy-9", cluster: "busy", active: false),
            ],
            targets: [
                .init(
                    iqn: Naming.diskIQN(vm: "busy-1"),
                    initiators: [Naming.initiatorIQN(node: "n1", vm: "busy-1", generation: 1)], account: nil,
                    file: nil)
            ],
            bridges: ["vcbr5"], overlays: [.init(name: "vcbr5x", vni: 7705, peers: [])],
            firewallTables: ["peerless_vcbr5"], dhcp: ["vcbr5"], currentFirewalls: [])
        for roles: [NodeRole] in [[.compute], [.storage], [.compute, .storage]] {
            #expect(
                NodePlan.plan(
                    desired: Self.world("n1", roles: roles, clusters: [busy], busy: ["busy"]), observed: observed)
                    == [])
            // Busy and without secrets: still not closed.
            #expect(
                NodePlan.plan(
                    desired: Self.world("n1", roles: roles, clusters: [busy], busy: ["busy"], closed: ["busy"]),
                    observed: observed) == [])
        }
        // Once the operation is over, n1 gives up what it holds of it.
        let repairs = Self.settles(Self.world("n1", roles: [.compute, .storage], clusters: [busy]), from: observed)
        #expect(repairs.first == .removeDomain(name: "busy-1") && repairs.last == .removeFirewall(bridge: "vcbr5"))
    }

    @Test func aBusyClusterLeavesTheOthersRepaired() {
        let busy = Self.cluster("busy", subnet: 5, nodes: ["n1"])
        let demo = Self.cluster("demo", subnet: 3, nodes: ["n1"])
        let repairs = Self.settles(Self.world("n1", clusters: [busy, demo], busy: ["busy"]), from: ObservedNode())
        #expect(repairs.allSatisfy { $0.cluster == "demo" } && !repairs.isEmpty)
    }

    // MARK: storage

    @Test func aTargetBoundToAnOldIncarnationIsExportedAgain() {
        let demo = Self.cluster("demo", subnet: 3, nodes: ["n2", "n3"], generation: 4)
        let world = Self.world("s", roles: [.storage], clusters: [demo])
        let good = Self.made(world)
        let current = good.targets.first { $0.iqn == demo.vms[0].diskIQN }!
        let old = Naming.initiatorIQN(node: "n1", vm: "demo-1", generation: 3)
        for stale in [
            ObservedNode.Target(iqn: current.iqn, initiators: [old], account: current.account, file: current.file),
            .init(
                iqn: current.iqn, initiators: [old, demo.vms[0].initiator], account: current.account, file: current.file
            ),
            .init(iqn: current.iqn, initiators: [], account: current.account, file: current.file),
            .init(iqn: current.iqn, initiators: current.initiators, account: nil, file: current.file),
            .init(iqn: current.iqn, initiators: current.initiators, account: "peerless.vm.x", file: current.file),
            .init(iqn: current.iqn, initiators: current.initiators, account: current.account, file: "/srv/other.raw"),
            .init(iqn: current.iqn, initiators: current.initiators, account: current.account, file: nil),
        ] {
            var observed = good
            observed.targets = observed.targets.map { $0.iqn == stale.iqn ? stale : $0 }
            #expect(Self.settles(world, from: observed) == Self.perform("demo", .export(vm: "demo-1")))
        }
    }

    @Test func anOrphanDiskTargetIsRemovedButNotAnImportOrAForeignOne() {
        let demo = Self.cluster("demo", subnet: 3, nodes: ["n1"])
        let world = Self.world("s", roles: [.storage], clusters: [demo])
        var observed = Self.made(world)
        observed.targets += [
            .init(iqn: Naming.diskIQN(vm: "gone-1"), initiators: ["x"], account: "peerless.vm.gone-1", file: "/f"),
            .init(iqn: Naming.importIQN(image: "debian"), initiators: ["x"], account: nil, file: "/g"),
            .init(iqn: "iqn.2001-04.com.example:other", initiators: [], account: nil, file: "/h"),
        ]
        #expect(Self.settles(world, from: observed) == [.removeTarget(iqn: Naming.diskIQN(vm: "gone-1"))])
        // On a compute node too: a disk target of no VM is Peerless's and placed nowhere.
        #expect(
            NodePlan.plan(desired: Self.world("n9", clusters: [demo]), observed: observed)
                == [.removeTarget(iqn: Naming.diskIQN(vm: "gone-1"))])
    }

    @Test func suspendedAndFailedClustersNeedNoTargetsButKeepThem() {
        for state in [ClusterState.suspended, .failed] {
            let demo = Self.cluster("demo", subnet: 3, state: state, nodes: ["n1"])
            let world = Self.world("s", roles: [.storage], clusters: [demo])
            #expect(NodePlan.plan(desired: world, observed: ObservedNode()) == [])
            let observed = Self.made(
                Self.world("s", roles: [.storage], clusters: [Self.cluster("demo", subnet: 3, nodes: ["n1"])]))
            #expect(NodePlan.plan(desired: world, observed: observed) == [])
        }
    }

    // MARK: suspended, failed, closed

    @Test func aSuspendedClusterKeepsItsNetworkAndStartsNoDomain() {
        let demo = Self.cluster("demo", subnet: 3, state: .suspended, nodes: ["n1", "n2"])
        let world = Self.world("n1", clusters: [demo])
        #expect(Self.settles(world, from: ObservedNode()) == Self.perform("demo", .firewall, .bridge, .overlay, .dhcp))
        var observed = Self.made(world)
        observed.domains = [.init(name: "demo-1", cluster: "demo", active: false, initiator: demo.vms[0].initiator)]
        #expect(NodePlan.plan(desired: world, observed: observed) == [])
    }

    @Test func aFailedClusterKeepsItsNetworkAndDomainsAsTheyAre() {
        let demo = Self.cluster("demo", subnet: 3, state: .failed, nodes: ["n1"])
        let world = Self.world("n1", clusters: [demo])
        var observed = Self.made(world)
        observed.domains = [.init(name: "demo-1", cluster: "demo", active: true, paused: true)]
        #expect(NodePlan.plan(desired: world, observed: observed) == [])
    }

    @Test func aClusterInAnUnsettledStateWithoutAnOperationIsKeptButNotMade() {
        let demo = Self.cluster("demo", subnet: 3, state: .creating, nodes: ["n1"])
        let world = Self.world("n1", roles: [.compute, .storage], clusters: [demo])
        var observed = ObservedNode()
        #expect(NodePlan.plan(desired: world, observed: observed) == [])
        observed = Self.made(
            Self.world("n1", roles: [.compute, .storage], clusters: [Self.cluster("demo", subnet: 3, nodes: ["n1"])]))
        #expect(NodePlan.plan(desired: world, observed: observed) == [])
    }

    @Test func aClosedClusterLosesItsTargetsStartsNothingAndIsMarkedFailed() {
        let demo = Self.cluster("demo", subnet: 3, nodes: ["n1", "n2"])
        let open = Self.made(Self.world("s", roles: [.storage], clusters: [demo]))
        let storage = Self.settles(Self.world("s", roles: [.storage], clusters: [demo], closed: ["demo"]), from: open)
        #expect(
            storage == demo.vms.map { .removeTarget(iqn: $0.diskIQN) } + [.close(cluster: "demo")])
        // On a compute node: closed, its network kept for guests that may be up, nothing started.
        let compute = Self.settles(Self.world("n1", clusters: [demo], closed: ["demo"]), from: ObservedNode())
        #expect(compute == [.close(cluster: "demo")] + Self.perform("demo", .firewall, .bridge, .overlay, .dhcp))
        // Not hosting it and no storage: not this node's to close.
        #expect(
            NodePlan.plan(desired: Self.world("n3", clusters: [demo], closed: ["demo"]), observed: ObservedNode()) == []
        )
        // Already failed: only what is left is removed.
        var failed = demo
        failed.state = .failed
        #expect(
            NodePlan.plan(
                desired: Self.world("s", roles: [.storage], clusters: [failed], closed: ["demo"]), observed: open)
                == demo.vms.map { .removeTarget(iqn: $0.diskIQN) })
    }

    // MARK: removals and name spaces

    @Test func onlyPeerlessNamesArePlacedNowhere() {
        let observed = ObservedNode(
            bridges: ["virbr0", "docker0", "vcbr", "vcbrx", "vcbr7v1", "vcbr7", "othr2"],
            overlays: [
                .init(name: "vcbr8x", vni: 7708, peers: []), .init(name: "vxlan0", vni: 1, peers: []),
                .init(name: "vcbr7v1x", vni: 1, peers: []),
            ],
            firewallTables: ["peerless_vcbr9", "filter", "nat", "peerless_other", "peerless_vcbrq"],
            dhcp: ["vcbr7", "virbr0"])
        let repairs = Self.settles(Self.world("n1", clusters: []), from: observed)
        #expect(
            repairs == [
                .stopDHCP(bridge: "vcbr7"), .removeBridge(name: "vcbr7"), .removeOverlay(name: "vcbr8x"),
                .removeFirewall(bridge: "vcbr9"),
            ])
        // Under another prefix, the same names are someone else's.
        var other = Self.world("n1", clusters: [])
        other.bridgePrefix = "othr"
        #expect(NodePlan.plan(desired: other, observed: observed) == [.removeBridge(name: "othr2")])
    }

    @Test func aDeadDnsmasqsFilesGoWithItsNetworkButNotWhileTheNetworkIsWanted() {
        // A node killed with its dnsmasq: the files stay, no process serves them.
        let kept = Self.cluster("kept", subnet: 2, nodes: ["n1"])
        var observed = Self.made(Self.world("n1", clusters: [kept]))
        observed.dhcp.remove("vcbr2")
        observed.dhcpFiles = ["vcbr2", "vcbr5"]
        let repairs = Self.settles(Self.world("n1", clusters: [kept]), from: observed)
        #expect(repairs.contains(.stopDHCP(bridge: "vcbr5")), "\(repairs)")
        #expect(!repairs.contains(.stopDHCP(bridge: "vcbr2")), "\(repairs)")
        #expect(repairs.contains(.perform(cluster: "kept", step: .dhcp)), "the wanted one is started: \(repairs)")
    }

    @Test func networkRemovalsComeAfterDomainRemovalsAndFirewallsLast() {
        let a = Self.cluster("a", subnet: 10, nodes: ["n1"])
        let b = Self.cluster("b", subnet: 2, nodes: ["n1"])
        let c = Self.cluster("c", subnet: 3, nodes: ["n1"])
        let observed = Self.made(Self.world("n1", clusters: [a, b, c]))
        // a and b are destroyed while n1 was away; c is still wanted.
        let repairs = Self.settles(Self.world("n1", clusters: [c]), from: observed)
        #expect(
            repairs == [
                .removeDomain(name: "a-1"), .removeDomain(name: "b-1"), .stopDHCP(bridge: "vcbr2"),
                .removeBridge(name: "vcbr2"), .stopDHCP(bridge: "vcbr10"), .removeBridge(name: "vcbr10"),
                .removeFirewall(bridge: "vcbr2"), .removeFirewall(bridge: "vcbr10"),
            ])
    }

    @Test func aNodeWithoutTheComputeRoleMakesNoNetworkAndStartsNothing() {
        let demo = Self.cluster("demo", subnet: 3, nodes: ["s"])
        let world = Self.world("s", roles: [.storage], clusters: [demo])
        #expect(Self.settles(world, from: ObservedNode()) == Self.perform("demo", .export(vm: "demo-1")))
    }

    @Test func aMixedUpNodeSettlesInOnePass() {
        let clusters = [
            Self.cluster("run", subnet: 1, nodes: ["n1", "n2", "n1"], generation: 2),
            Self.cluster("nap", subnet: 2, state: .suspended, nodes: ["n1"]),
            Self.cluster("dud", subnet: 3, state: .failed, nodes: ["n2", "n1"]),
            Self.cluster("shut", subnet: 4, nodes: ["n1"]),
            Self.cluster("away", subnet: 5, nodes: ["n3", "n2"]),
            Self.cluster("busy", subnet: 6, state: .creating, nodes: ["n1"]),
        ]
        let observed = ObservedNode(
            domains: [
                .init(name: "run-1", cluster: "run", active: true, paused: true),
                .init(name: "run-2", cluster: "run", active: true),
                .init(name: "away-1", cluster: "away", active: true),
                .init(name: "ghost-1", cluster: "ghost", active: false),
                .init(name: "busy-1", cluster: "busy", active: false),
            ],
            targets: [
                .init(iqn: Naming.diskIQN(vm: "run-1"), initiators: ["old"], account: nil, file: nil),
                .init(iqn: Naming.diskIQN(vm: "ghost-1"), initiators: [], account: nil, file: nil),
                .init(iqn: Naming.diskIQN(vm: "shut-1"), initiators: [], account: nil, file: nil),
            ],
            bridges: ["vcbr1", "vcbr5", "vcbr77"], overlays: [.init(name: "vcbr5x", vni: 7705, peers: [])],
            firewallTables: ["peerless_vcbr5", "peerless_vcbr1", "peerless_vcbr6"], dhcp: ["vcbr77"],
            currentFirewalls: ["vcbr5"])
        let repairs = Self.settles(
            Self.world("n1", roles: [.compute, .storage], clusters: clusters, busy: ["busy"], closed: ["shut"]),
            from: observed)
        #expect(repairs.contains(.removeDomain(name: "ghost-1")) && !repairs.contains(.removeDomain(name: "busy-1")))
        #expect(repairs.contains(.close(cluster: "shut")) && repairs.last == .removeFirewall(bridge: "vcbr5"))
    }

    /// A node back after it was fenced: its VM's incarnation is fenced but still placed on
    /// it (not recovered yet). It removes the domain and starts nothing; the storage node
    /// keeps the target but never binds that name again; the other VM runs on.
    @Test func aFencedIncarnationIsNeverStartedNorExportedAgain() {
        let c = Self.cluster("web", subnet: 2, nodes: ["n1", "n2"])
        var world = Self.world("n1", roles: [.compute, .storage], clusters: [c])
        let observed = Self.made(world)
        world.fenced = [c.vms[0].initiator]
        var held = observed
        held.targets.removeAll { $0.iqn == c.vms[0].diskIQN }
        held.targets.append(.init(iqn: c.vms[0].diskIQN, initiators: [], account: nil, file: nil))
        let repairs = NodePlan.plan(desired: world, observed: held)
        #expect(repairs.contains(.removeDomain(name: "web-1")))
        #expect(!repairs.contains(.perform(cluster: "web", step: .export(vm: "web-1"))))
        #expect(!repairs.contains { if case .perform(_, .start("web-1")) = $0 { true } else { false } })
        #expect(!repairs.contains(.removeTarget(iqn: c.vms[0].diskIQN)))
        // Its VM was n1's only one: the network goes too.
        #expect(repairs.contains(.removeBridge(name: c.network.bridge)))
        // Unfenced, the same node would export and start it again.
        world.fenced = []
        #expect(
            NodePlan.plan(desired: world, observed: held).contains(.perform(cluster: "web", step: .export(vm: "web-1")))
        )
    }

    @Test func repairsDescribeThemselvesForTheLog() {
        #expect("\(Repair.perform(cluster: "demo", step: .define(vm: "demo-1")))" == "cluster demo: define demo-1")
        #expect("\(Repair.removeFirewall(bridge: "vcbr3"))" == "remove firewall peerless_vcbr3")
        #expect("\(Repair.stopDHCP(bridge: "vcbr3"))" == "stop dnsmasq on vcbr3")
        #expect("\(Repair.close(cluster: "demo"))" == "close cluster demo (no disk secrets)")
        #expect(Repair.removeBridge(name: "vcbr3").cluster == nil && Repair.close(cluster: "x").cluster == "x")
    }
}
