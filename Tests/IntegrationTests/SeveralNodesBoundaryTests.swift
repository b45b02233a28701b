import Foundation
import Testing
import VCModel

/// What several nodes must keep from one node: two clusters that share nodes stay apart as
/// seen from their guests, each network's gateway address is on exactly one node, and an
/// operation that fails, or whose node dies, leaves nothing on any node.
@Suite(.serialized) struct SeveralNodesBoundaryTests {
    /// The addresses of the two clusters of the isolation test: the first create on an
    /// empty testbed gets subnet 1, the second subnet 2 (checked below, not assumed).
    static func vmIPs(subnet: Int) -> [String] { (11...13).map { "10.77.\(subnet).\($0)" } }
    static func nodeIPs(subnet: Int) -> [String] { (1...4).map { "10.77.\(subnet).\($0)" } }
    static let underlay = ["10.99.0.10", "10.99.0.11", "10.99.0.13", "10.99.0.1"]
    static let pinged = vmIPs(subnet: 1) + vmIPs(subnet: 2) + nodeIPs(subnet: 1) + nodeIPs(subnet: 2) + underlay
    /// The nodes' listeners on the underlay, which no guest may reach: each libvirtd's TCP
    /// socket (live migration) and each vcd's API.
    static let listeners = underlay.flatMap { ["\($0):16509", "\($0):7480"] }

    /// Two 3-VM clusters over the same three nodes. Every guest routes everything through
    /// its node and pings every VM of both clusters, every node and gateway address of both
    /// networks and the nodes' underlay addresses: it reaches its own cluster's VMs (on its
    /// node and across the VXLAN) and nothing else. Each network's gateway address is on
    /// exactly one node; when that node is cut off, it gives the address up and another
    /// hosting node takes it, and after the heal there is still exactly one.
    @Test(.timeLimit(.minutes(15)))
    func twoClustersOnTheSameNodesReachOnlyThemselves() async throws {
        let hook =
            "testing: {guestOEM: [\"peerless.pings=\(Self.pinged.joined(separator: ","))\", \"peerless.pingwait=60\", \"peerless.tcp=\(Self.listeners.joined(separator: ","))\"]}"
        try await NodeTestbed.with(computeNodes: 3, extra: ["n1": hook, "n2": hook, "n3": hook]) { bed in
            let imported = try await bed.vc(bed.storage, ["image", "import", "tiny", Build.tinyImage])
            #expect(imported.status == 0, "\(imported)")
            var clusters: [ClusterStatus] = []
            for (name, via) in [("ia", "n1"), ("ib", "n2")] {
                let created = try await bed.vc(
                    via, ["cluster", "create", name, "--image", "tiny", "--vms", "3", "--memory", "128M"])
                #expect(created.status == 0, "\(created)")
                clusters.append(try await bed.vcJSON("n3", ClusterStatus.self, ["cluster", "show", name]))
            }
            for (i, c) in clusters.enumerated() {
                #expect(Set(c.vms.map(\.node)) == ["n1", "n2", "n3"], "\(c.cluster.name) spans the nodes: \(c.vms)")
                try #require(c.vms.map(\.ip).sorted() == Self.vmIPs(subnet: i + 1), "\(c.vms)")
            }

            for c in clusters {
                let own = Set(c.vms.map(\.ip))
                for vm in c.vms {
                    let log = "\(bed.stateDirectory(vm.node))/consoles/\(c.cluster.name)/\(vm.name).log"
                    let text = try await eventually("\(vm.name)'s pings", timeout: .seconds(300), every: .seconds(2)) {
                        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
                        return (text.contains("PEERLESS-TINY-PINGS-DONE") ? text : nil, String(text.suffix(300)))
                    }
                    for ip in Self.pinged {
                        let verdict = own.contains(ip) ? "reached" : "blocked"
                        #expect(
                            text.contains("PEERLESS-TINY-PING ip=\(ip) \(verdict)"),
                            "\(vm.name) on \(vm.node): \(ip) should be \(verdict)")
                    }
                    for listener in Self.listeners {
                        #expect(
                            text.contains("PEERLESS-TINY-TCP addr=\(listener) closed"),
                            "\(vm.name) on \(vm.node): the node listener \(listener) must be out of a guest's reach")
                    }
                }
            }

            // One gateway holder per network; cut it off and another takes over.
            let network = clusters[0].cluster.network
            let holder = try await gatewayHolders(bed, network)
            try #require(holder.count == 1, "exactly one node holds \(network.gateway): \(holder)")
            let first = holder[0]
            // Sampled all along: the cut-off node drops it (its lease's deadline passes)
            // before its lease can expire and another node take it.
            try await bed.partition([first])
            var twice: [[String]] = []
            let moved = try await eventually(
                "another node to hold \(network.gateway)", timeout: .seconds(60), every: .milliseconds(200)
            ) {
                let now = try await gatewayHolders(bed, network)
                if now.count > 1 { twice.append(now) }
                return (now.count == 1 && now[0] != first ? now[0] : nil, "\(now)")
            }
            #expect(moved != first)
            #expect(twice.isEmpty, "two nodes held \(network.gateway) at once: \(twice)")
            // Healed: the node back (its etcd member may force an election, and every
            // node's lease may pass its deadline meanwhile) finds the key held and stays
            // out; never two holders, and one of each network again.
            try await bed.heal()
            let networks = clusters.map(\.cluster.network)
            _ = try await eventually("one holder per network after the heal", timeout: .seconds(60), every: .seconds(1))
            {
                var counts: [Int] = []
                for n in networks {
                    let now = try await gatewayHolders(bed, n)
                    if now.count > 1 { twice.append(now) }
                    counts.append(now.count)
                }
                return (counts == [1, 1] ? true : nil, "\(counts)")
            }
            #expect(twice.isEmpty, "two nodes held a gateway address at once after the heal: \(twice)")
            // The node back is ready again before the destroy: an undo meant for a node
            // seen dead is left to its reconciler, and this test checks right after.
            _ = try await eventually("every node ready after the heal", timeout: .seconds(60), every: .seconds(1)) {
                // Refused with "retry shortly" while etcd elects a leader after the heal.
                let nodes = (try? await bed.vcJSON("n3", [NodeSummary].self, ["node", "list"])) ?? []
                let ready = nodes.filter { bed.nodes.contains($0.record.name) && $0.state == .ready }.count
                return (ready == bed.nodes.count ? true : nil, "\(nodes.map { "\($0.record.name) \($0.state)" })")
            }

            for c in clusters {
                // The cut-off node's VMs were recovered elsewhere: that operation may still
                // hold the cluster (and etcd may be electing after the heal).
                let destroyed = try await eventually(
                    "destroy of \(c.cluster.name)", timeout: .seconds(120), every: .seconds(2)
                ) {
                    let r = try await bed.vc("n3", ["cluster", "destroy", c.cluster.name])
                    let retry = r.stderr.contains("is busy") || r.stderr.contains("no quorum at the moment")
                    return (retry ? nil : r, r.stderr)
                }
                #expect(destroyed.status == 0, "\(destroyed)")
                // The destroy removes what the catalog places; on the nodes that were never
                // cut off nothing is left right after it.
                let left = try await leftovers(bed, of: c, on: bed.nodes.filter { $0 != first })
                #expect(left.isEmpty, "\(left)")
            }
            // The cut-off node kept its stopped incarnations (a recovery, then the destroy,
            // held their clusters all along): its own reconciler removes them at its next
            // passes (every 5 s here), with nothing running meanwhile.
            _ = try await eventually(
                "\(first) to remove what it kept of the destroyed clusters", timeout: .seconds(30), every: .seconds(1)
            ) {
                var left: [String] = []
                for c in clusters { left += try await leftovers(bed, of: c, on: [first]) }
                return (left.isEmpty ? true : nil, "\(left)")
            }
        }
    }

    /// A create that fails on one node is undone on all of them; a create and a destroy
    /// whose coordinating node dies midway are undone or finished by a live node; the dead
    /// node, back, removes what it still had of them.
    @Test(.timeLimit(.minutes(15)))
    func operationsThatFailOrLoseTheirNodeLeaveNothing() async throws {
        try await NodeTestbed.with(
            computeNodes: 3,
            extra: [
                // fx-2 fails to start on whichever node it is placed on; n1 is slow, so an
                // operation is still busy there when its coordinator dies.
                "n1": "testing: {stepDelayMilliseconds: 700, failStep: \"start fx-2\"}",
                "n2": "testing: {failStep: \"start fx-2\"}", "n3": "testing: {failStep: \"start fx-2\"}",
            ]
        ) { bed in
            let imported = try await bed.vc(bed.storage, ["image", "import", "tiny", Build.tinyImage])
            #expect(imported.status == 0, "\(imported)")

            // fx-2 cannot start on its node: the whole create is rolled back everywhere.
            let failed = try await bed.vc(
                "n3", ["cluster", "create", "fx", "--image", "tiny", "--vms", "3", "--memory", "128M"])
            #expect(failed.status != 0, "\(failed)")
            // Progress lines first, then the one-line error.
            let line = failed.stderr.split(whereSeparator: \.isNewline).last.map(String.init) ?? ""
            #expect(line.contains("start fx-2") && line.contains("rolled back"), "\(failed)")
            #expect(try await bed.vc("n1", ["cluster", "show", "fx"]).status != 0)
            let fx = try await leftovers(bed, of: "fx", vms: 3, on: bed.nodes)
            #expect(fx.isEmpty, "\(fx)")

            // The node coordinating a create dies while n1 is still making its share.
            let create = Task {
                try await bed.vc(
                    "n3", ["cluster", "create", "kx", "--image", "tiny", "--vms", "3", "--memory", "128M"])
            }
            _ = try await eventually("the create to be under way", timeout: .seconds(60), every: .milliseconds(200)) {
                let r = try await bed.etcdctl(["get", "/peerless/ops/kx", "--print-value-only"])
                return (r.stdout.contains("create") ? true : nil, r.stdout)
            }
            try await Task.sleep(for: .seconds(2))
            try await bed.kill("n3")
            _ = try? await create.value
            _ = try await eventually("a live node to undo the create", timeout: .seconds(120), every: .seconds(1)) {
                let r = try await bed.etcdctl(["get", "--prefix", "/peerless/", "--keys-only"])
                return (r.status == 0 && !r.stdout.contains("/kx") ? true : nil, r.stdout)
            }
            let kx = try await leftovers(bed, of: "kx", vms: 3, on: ["n1", "n2"])
            #expect(kx.isEmpty, "\(kx)")
            // n3 back: its reconciler removes the share it had made.
            try await bed.restart("n3")
            _ = try await eventually("n3 to remove what it had of kx", timeout: .seconds(90), every: .seconds(2)) {
                let left = try await leftovers(bed, of: "kx", vms: 3, on: ["n3"])
                return (left.isEmpty ? true : nil, "\(left)")
            }

            // The node coordinating a destroy dies midway: a live node finishes it.
            let made = try await bed.vc(
                "n2", ["cluster", "create", "dx", "--image", "tiny", "--vms", "3", "--memory", "128M"])
            #expect(made.status == 0, "\(made)")
            let destroy = Task { try await bed.vc("n3", ["cluster", "destroy", "dx"]) }
            _ = try await eventually("the destroy to be under way", timeout: .seconds(60), every: .milliseconds(200)) {
                let r = try await bed.etcdctl(["get", "/peerless/ops/dx", "--print-value-only"])
                return (r.stdout.contains("destroy") ? true : nil, r.stdout)
            }
            try await Task.sleep(for: .seconds(1))
            try await bed.kill("n3")
            _ = try? await destroy.value
            _ = try await eventually("a live node to finish the destroy", timeout: .seconds(120), every: .seconds(1)) {
                let r = try await bed.etcdctl(["get", "--prefix", "/peerless/", "--keys-only"])
                return (r.status == 0 && !r.stdout.contains("/dx") ? true : nil, r.stdout)
            }
            let dx = try await leftovers(bed, of: "dx", vms: 3, on: ["n1", "n2"])
            #expect(dx.isEmpty, "\(dx)")
            try await bed.restart("n3")
            _ = try await eventually("n3 to remove what it had of dx", timeout: .seconds(90), every: .seconds(2)) {
                let left = try await leftovers(bed, of: "dx", vms: 3, on: ["n3"])
                return (left.isEmpty ? true : nil, "\(left)")
            }
        }
    }

    /// The nodes whose bridge for `network` carries its gateway address.
    func gatewayHolders(_ bed: NodeTestbed, _ network: ClusterNetwork) async throws -> [String] {
        var out: [String] = []
        for node in bed.nodes {
            let shown = try await bed.exec(node, ["ip", "-o", "-4", "addr", "show", "dev", network.bridge])
            if shown.stdout.contains(" \(network.gateway)/\(network.prefixLength) ") { out.append(node) }
        }
        return out
    }

    func leftovers(_ bed: NodeTestbed, of cluster: ClusterStatus, on nodes: [String]) async throws -> [String] {
        try await leftovers(bed, of: cluster.cluster.name, vms: cluster.vms.count, on: nodes)
    }

    /// What is left of cluster `name` on `nodes` and on the storage node: domains, its
    /// bridge, VXLAN link, nftables tables and dnsmasq files (found by the VM names' tap
    /// ports and the cluster's bridge as the node's own records name it), targets and
    /// files. Empty means clean.
    func leftovers(_ bed: NodeTestbed, of name: String, vms: Int, on nodes: [String]) async throws -> [String] {
        var left: [String] = []
        let names = (1...vms).map { Naming.vmName(cluster: name, index: $0) }
        for node in nodes {
            let domains = try await bed.exec(node, ["virsh", "-c", "qemu:///system", "list", "--all", "--name"])
            for d in domains.stdout.split(whereSeparator: \.isNewline) where names.contains(String(d)) {
                left.append("\(node): domain \(d)")
            }
            // A bridge or table with no cluster left in the catalog that hosts it here.
            let catalog = try await bed.etcdctl(["get", "--prefix", "/peerless/clusters/", "--print-value-only"])
            let links = try await bed.exec(node, ["ip", "-o", "link", "show"])
            for line in links.stdout.split(whereSeparator: \.isNewline) {
                guard let field = line.split(separator: " ").dropFirst().first else { continue }
                let link = String(field.split(separator: ":").first ?? "").split(separator: "@").first.map(String.init)
                guard let link, link.hasPrefix("vcbr") else { continue }
                // The bridge itself, its VXLAN link (x) or one of its VMs' taps (vN).
                let bridge = "vcbr" + link.dropFirst(4).prefix { $0.isNumber }
                if !catalog.stdout.contains("\"\(bridge)\"") { left.append("\(node): link \(link)") }
            }
            let tables = try await bed.exec(node, ["nft", "list", "tables"])
            for t in tables.stdout.split(whereSeparator: \.isNewline) where t.contains("peerless_vcbr") {
                let bridge = String(t.split(separator: "_").last ?? "")
                if !catalog.stdout.contains("\"\(bridge)\"") { left.append("\(node): \(t)") }
            }
            let net = try await bed.exec(node, ["ls", "/var/lib/peerless/net"])
            for f in net.stdout.split(whereSeparator: \.isNewline) where f.hasPrefix("vcbr") {
                let bridge = String(f.split(separator: ".").first ?? "")
                if !catalog.stdout.contains("\"\(bridge)\"") { left.append("\(node): net/\(f)") }
            }
        }
        let targets = try await bed.exec(bed.storage, ["tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target"])
        for vm in names where targets.stdout.contains("disk.\(vm)\n") || targets.stdout.contains("disk.\(vm) ") {
            left.append("stor: target of \(vm)")
        }
        let files = try await bed.exec(
            bed.storage,
            ["find", "/var/lib/peerless/pool/disks/\(name)", "/var/lib/peerless/pool/saves/\(name)", "-mindepth", "0"])
        for f in files.stdout.split(whereSeparator: \.isNewline) { left.append("stor: \(f)") }
        let keys = try await bed.etcdctl(["get", "--prefix", "/peerless/", "--keys-only"])
        for k in keys.stdout.split(whereSeparator: \.isNewline) where k.hasSuffix("/\(name)") {
            left.append("catalog: \(k)")
        }
        return left
    }
}
