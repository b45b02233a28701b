import Foundation

/// One host-side change that a lifecycle operation makes or undoes. The daemon's executor
/// carries steps out; this type only decides which steps, in which order.
public enum Step: Hashable, Sendable, CustomStringConvertible {
    /// The cluster network's tenant boundary (nftables): made before the bridge exists and
    /// removed after it is gone, so no guest is ever on the network without it.
    case firewall
    /// The cluster's bridge with the gateway address on it.
    case bridge
    /// The VXLAN link joining this node's bridge to the other hosting nodes' bridges, with
    /// one head-end replication entry per peer node. Nothing on a single node.
    case overlay
    /// The dnsmasq serving the cluster's static DHCP table and DNS names.
    case dhcp
    /// The VM's private reflink copy of the golden image.
    case snapshot(vm: String)
    /// The VM's tgt target, bound to its node's initiator.
    case export(vm: String)
    /// Log in through libiscsi and check TEST UNIT READY, INQUIRY, READ CAPACITY.
    case verify(vm: String)
    /// The libvirt secret that gives QEMU the VM disk's CHAP password.
    case secret(vm: String)
    /// The libvirt domain definition.
    case define(vm: String)
    /// Start (or restore) the domain with its vCPUs paused.
    case start(vm: String)
    /// Let a started domain's vCPUs run. Done for all VMs together at the end, so that the
    /// first guests to boot do not starve the starts of the others, and the cluster comes
    /// up as one.
    case release(vm: String)
    /// Save the domain's memory to the pool and stop it.
    case save(vm: String)
    /// Admit the VM's new incarnation at its disk's target beside the one running now, so
    /// that the destination of a live migration can log in before the source pauses.
    case admit(vm: String)
    /// Move the running VM from its origin to the node it is placed on now, while the
    /// guest runs; when that fails, save it to the storage node instead (its start on the
    /// destination then restores it). Runs on the origin.
    case migrate(vm: String)

    public var description: String {
        switch self {
        case .firewall: return "firewall"
        case .bridge: return "bridge"
        case .overlay: return "overlay"
        case .dhcp: return "dhcp"
        case .snapshot(let vm): return "snapshot \(vm)"
        case .export(let vm): return "export \(vm)"
        case .verify(let vm): return "verify \(vm)"
        case .secret(let vm): return "secret \(vm)"
        case .define(let vm): return "define \(vm)"
        case .start(let vm): return "start \(vm)"
        case .release(let vm): return "release \(vm)"
        case .save(let vm): return "save \(vm)"
        case .admit(let vm): return "admit \(vm)"
        case .migrate(let vm): return "migrate \(vm)"
        }
    }
}

extension Step {
    /// The step a description names: how steps travel to the node that carries them out.
    public init?(description text: String) {
        let parts = text.split(separator: " ", maxSplits: 1).map(String.init)
        switch (parts.first, parts.count > 1 ? parts[1] : nil) {
        case ("firewall", nil): self = .firewall
        case ("bridge", nil): self = .bridge
        case ("overlay", nil): self = .overlay
        case ("dhcp", nil): self = .dhcp
        case ("snapshot", let vm?): self = .snapshot(vm: vm)
        case ("export", let vm?): self = .export(vm: vm)
        case ("verify", let vm?): self = .verify(vm: vm)
        case ("secret", let vm?): self = .secret(vm: vm)
        case ("define", let vm?): self = .define(vm: vm)
        case ("start", let vm?): self = .start(vm: vm)
        case ("release", let vm?): self = .release(vm: vm)
        case ("save", let vm?): self = .save(vm: vm)
        case ("admit", let vm?): self = .admit(vm: vm)
        case ("migrate", let vm?): self = .migrate(vm: vm)
        default: return nil
        }
    }

    /// The VM a step is about, or nil for the network steps.
    public var vm: String? {
        switch self {
        case .firewall, .bridge, .overlay, .dhcp: return nil
        case .snapshot(let vm), .export(let vm), .verify(let vm), .secret(let vm), .define(let vm), .start(let vm),
            .release(let vm), .save(let vm), .admit(let vm), .migrate(let vm):
            return vm
        }
    }

    /// Where a step runs: on the storage node (the disk and its target), on the VM's node,
    /// on every node that hosts one of the cluster's VMs (its network), or, for a
    /// migration, on the node the VM runs on before it.
    public var site: StepSite {
        switch self {
        case .snapshot, .export, .admit: return .storage
        case .firewall, .bridge, .overlay, .dhcp: return .everyHost
        case .verify, .secret, .define, .start, .release, .save: return .vmHost
        case .migrate: return .origin
        }
    }
}

public enum StepSite: Sendable, Equatable { case storage, vmHost, everyHost, origin }

/// The steps of an operation: a shared part done first (network), then one chain per VM,
/// run in parallel, then the final steps, also in parallel. Undo runs the VM chains
/// backwards in parallel, then the shared part backwards.
public struct ClusterPlan: Sendable, Equatable {
    public var shared: [Step]
    public var machines: [[Step]]
    public var final: [Step] = []

    public var allSteps: [Step] { shared + machines.flatMap { $0 } + final }

    /// A cluster's network on each node that hosts it, in the order it is made.
    public static let networkSteps: [Step] = [.firewall, .bridge, .overlay, .dhcp]

    /// Creating a cluster.
    public static func create(_ cluster: VirtualCluster) -> ClusterPlan {
        ClusterPlan(
            shared: networkSteps,
            machines: cluster.vms.map {
                [
                    .snapshot(vm: $0.name), .export(vm: $0.name), .verify(vm: $0.name), .secret(vm: $0.name),
                    .define(vm: $0.name), .start(vm: $0.name),
                ]
            },
            final: cluster.vms.map { .release(vm: $0.name) }
        )
    }

    /// Undoing a create, or destroying: the create plan's steps that leave something
    /// behind, in reverse. Verify leaves nothing; undoing define also stops the domain.
    public static func teardown(_ cluster: VirtualCluster) -> ClusterPlan {
        let made = create(cluster)
        return ClusterPlan(
            shared: made.shared.reversed(),
            machines: made.machines.map {
                $0.reversed().filter { if case .verify = $0 { return false } else { return true } }
            }
        )
    }

    /// Suspending: every VM's memory goes to the pool.
    public static func suspend(_ cluster: VirtualCluster) -> ClusterPlan {
        ClusterPlan(shared: [], machines: cluster.vms.map { [.save(vm: $0.name)] })
    }

    /// Resuming: the network, exports and secrets are made sure of (they are gone after a
    /// host restart, and the VMs may be placed on other nodes now), each disk is checked,
    /// each domain defined where it is placed, then each VM restored.
    public static func resume(_ cluster: VirtualCluster) -> ClusterPlan {
        ClusterPlan(
            shared: networkSteps,
            machines: cluster.vms.map {
                [
                    .export(vm: $0.name), .verify(vm: $0.name), .secret(vm: $0.name), .define(vm: $0.name),
                    .start(vm: $0.name),
                ]
            },
            final: cluster.vms.map { .release(vm: $0.name) }
        )
    }
}

extension ClusterPlan {
    /// Recovering the VMs of a node that died, placed anew and fenced at their old name:
    /// the network is made sure of on every node that hosts the cluster now (a new one gets
    /// it, the others' tunnels and tables follow the new placement), then each of `vms`
    /// is exported to its new incarnation, checked, defined and booted from its disk as the
    /// guest left it. The other VMs are not touched.
    public static func recover(_ cluster: VirtualCluster, vms: [String]) -> ClusterPlan {
        let moved = cluster.vms.filter { vms.contains($0.name) }
        return ClusterPlan(
            shared: networkSteps,
            machines: moved.map {
                [
                    .export(vm: $0.name), .verify(vm: $0.name), .secret(vm: $0.name), .define(vm: $0.name),
                    .start(vm: $0.name),
                ]
            },
            final: moved.map { .release(vm: $0.name) }
        )
    }
}

extension ClusterPlan {
    /// Moving `vms` of a running cluster to the nodes they are placed on now, while their
    /// guests run (a drain). The network is made sure of on every node that hosts the
    /// cluster before or after; then, per VM: the destination's incarnation is admitted
    /// beside the running one, its secret and definition made on the destination, the
    /// guest migrated (or, failing that, saved to the storage node), started there if the
    /// migration did not (a restore of the saved memory), and last its disk exported to
    /// the new incarnation alone, which unbinds the old one for good.
    public static func migrate(_ cluster: VirtualCluster, vms: [String]) -> ClusterPlan {
        let moved = cluster.vms.filter { vms.contains($0.name) }
        return ClusterPlan(
            shared: networkSteps,
            machines: moved.map {
                [
                    .admit(vm: $0.name), .secret(vm: $0.name), .define(vm: $0.name), .migrate(vm: $0.name),
                    .start(vm: $0.name), .export(vm: $0.name),
                ]
            },
            final: moved.map { .release(vm: $0.name) }
        )
    }
}

extension ClusterPlan {
    /// Settling a migration that failed or lost its vcd (`MigrationOutcome`): the VMs that
    /// run on their destination, or nowhere, get the rest of their chain there (all of it
    /// idempotent: a start of a running domain does nothing, of a saved one restores it),
    /// and their disks are exported to the new incarnation alone; the VMs that stayed
    /// have their disks exported to their old incarnation alone again.
    public static func settleMigration(restarted: [String], stayed: [String]) -> ClusterPlan {
        ClusterPlan(
            shared: networkSteps,
            machines: restarted.map { [.secret(vm: $0), .define(vm: $0), .start(vm: $0), .export(vm: $0)] }
                + stayed.map { [.export(vm: $0)] },
            final: restarted.map { .release(vm: $0) })
    }
}

/// Rewrites the host-side parts of a saved domain definition for the node that restores
/// it: the disk's portal and this incarnation's initiator name. Everything the guest
/// sees stays, so libvirt's ABI check accepts it.
public enum SavedDefinition {
    public static func retarget(_ xml: String, portal: ISCSIPortal, initiator: String) -> String {
        var out = xml
        out = replace(in: out, start: "<iqn name='", end: "'", with: XML.escape(initiator))
        out = replace(in: out, start: "<host name='", end: "'", with: XML.escape(portal.host))
        out = replace(in: out, start: " port='", end: "'", with: "\(portal.port)", after: "<host name='")
        return out
    }

    /// Replaces the text between every `start` and the next `end`; with `after`, only
    /// where `start` follows `after` on the same element.
    static func replace(in text: String, start: String, end: String, with value: String, after: String? = nil)
        -> String
    {
        var result = ""
        var rest = Substring(text)
        while let s = rest.range(of: start) {
            if let after {
                // Only a `port='…'` inside an element that began with `after`.
                let head = rest[..<s.lowerBound]
                guard let a = head.range(of: after, options: .backwards), !head[a.upperBound...].contains("<")
                else {
                    result += rest[..<s.upperBound]
                    rest = rest[s.upperBound...]
                    continue
                }
            }
            guard let e = rest[s.upperBound...].range(of: end) else { break }
            result += rest[..<s.upperBound] + value + end
            rest = rest[e.upperBound...]
        }
        return result + rest
    }
}
