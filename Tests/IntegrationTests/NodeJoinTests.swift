import Foundation
import Testing
import VCModel

/// The technician brings a node in with `vcnode join` and puts it in a dead node's place
/// with `vcnode replace`: the new node's etcd member joins as a learner and is promoted, so
/// that three voting members stay on healthy nodes; a join etcd cannot take and a replace of
/// a live node are refused with one line and nothing changed; the new node holds VMs, its
/// vote counts, and vcd starts its member again after the node restarts.
@Suite(.serialized) struct NodeJoinTests {
    @Test(.timeLimit(.minutes(12)))
    func aNewNodeTakesADeadMembersSeatInEtcdAndHoldsVMs() async throws {
        try await NodeTestbed.with(computeNodes: 4) { bed in
            try await configureFromAPeer("n4", bed)
            // A machine given a live node's name (n4's configured as n2) is refused it.
            try await rename("n4", to: "n2", bed)
            _ = try await eventually("n4's vcd to answer", timeout: .seconds(60), every: .milliseconds(500)) {
                let r = try await bed.vc("n4", ["node", "list"])
                return (r.status == 0 ? true : nil, "\(r)")
            }
            let taken = try await bed.vcnode("n4", ["join"])
            #expect(
                taken.status != 0 && taken.stderr.contains("node name n2 is in use by another machine")
                    && taken.stderr.contains(bed.endpoint("n2")), "\(taken)")
            #expect(taken.stderr.split(separator: "\n").count == 1, "one line: \(taken.stderr)")
            let n2 = try await bed.vcJSON("n3", [NodeSummary].self, ["node", "list"]).first { $0.record.name == "n2" }
            #expect(
                n2?.state == .ready && n2?.record.api == bed.endpoint("n2"),
                "n2 keeps its name: \(String(describing: n2))")
            // It repairs nothing as n2 (n2's VMs and operations are n2's own).
            _ = try await eventually("n4's vcd to stand aside", timeout: .seconds(30), every: .seconds(1)) {
                let log = (try? String(contentsOfFile: bed.logFile("n4", "vcd"), encoding: .utf8)) ?? ""
                return (log.contains("reconcile skipped: another machine holds") ? true : nil, "")
            }
            try await rename("n4", to: "n4", bed)
            _ = try await eventually("n4 to be ready again", timeout: .seconds(60), every: .milliseconds(500)) {
                let state = try? await state(bed, "n4")
                return (state == .ready ? true : nil, "\(String(describing: state))")
            }

            // Three healthy voters: n4 stays their client.
            let client = try await bed.vcnode("n4", ["join"])
            #expect(client.status == 0 && client.stdout.contains("joined as a client of etcd: 3 healthy"), "\(client)")
            #expect(try await members(bed) == [.init("n1"), .init("n2"), .init("n3")])

            try await bed.kill("n1")
            _ = try await eventually("n1 to be seen dead", timeout: .seconds(60), every: .milliseconds(500)) {
                let state = try? await state(bed, "n1")
                return (state == .dead ? true : nil, "\(String(describing: state))")
            }
            // etcd would refuse the addition while the dead n1 is listed: refused first, in one line.
            let join = try await bed.vcnode("n4", ["join"])
            #expect(
                join.status != 0 && join.stderr.contains("etcd voting member n1 does not answer")
                    && join.stderr.contains("vcnode replace n1"), "\(join)")
            #expect(join.stderr.split(separator: "\n").count == 1, "one line: \(join.stderr)")
            // n2 is alive and not drained: it keeps its place.
            let live = try await bed.vcnode("n4", ["replace", "n2"])
            #expect(live.status != 0 && live.stderr.contains("cannot replace n2: node n2 is ready"), "\(live)")
            #expect(try await members(bed) == [.init("n1"), .init("n2"), .init("n3")], "nothing changed")
            #expect(try await state(bed, "n2") == .ready)

            let replaced = try await bed.vcnode("n4", ["replace", "n1"])
            #expect(replaced.status == 0, "\(replaced)")
            // The steps on stderr, as every progress line.
            #expect(replaced.stderr.contains("node n1 removed (its etcd member too"), "\(replaced)")
            #expect(replaced.stderr.contains("adding n4 as a learner"), "\(replaced)")
            #expect(replaced.stderr.contains("caught up in"), "\(replaced)")
            #expect(
                replaced.stdout.contains("node n4 is a voting etcd member: 3 voting members (n2, n3, n4)"),
                "\(replaced.stdout)")
            #expect(try await members(bed) == [.init("n2"), .init("n3"), .init("n4")], "n4 votes, n1 is gone")
            let nodes = try await bed.vcJSON("n3", [NodeSummary].self, ["node", "list"])
            #expect(!nodes.contains { $0.record.name == "n1" }, "n1 is gone from vc node list")
            #expect(nodes.first { $0.record.name == "n4" }?.roles.contains(.etcd) == true, "\(nodes)")
            // Every vcd follows etcd's members: n4's member is used, n1's no longer tried.
            _ = try await eventually("n3's vcd to follow the members", timeout: .seconds(30), every: .seconds(1)) {
                let log = (try? String(contentsOfFile: bed.logFile("n3", "vcd"), encoding: .utf8)) ?? ""
                let line = log.split(separator: "\n").last { $0.contains("following etcd's members") } ?? ""
                let follows = line.contains("\(bed.address("n4")):2379") && !line.contains("\(bed.address("n1")):2379")
                return (follows ? true : nil, String(line))
            }
            let again = try await bed.vcnode("n4", ["join"])
            #expect(again.status == 0 && again.stdout.contains("is a voting etcd member already"), "\(again)")

            // A restarted node gets its member back from vcd (the testbed starts none on n4).
            try await bed.kill("n4")
            try await bed.restart("n4")
            _ = try await eventually("n4's etcd member to answer", timeout: .seconds(60), every: .milliseconds(500)) {
                let health = try? await bed.hub([
                    "etcdctl", "--endpoints", "http://\(bed.address("n4")):2379", "endpoint", "health",
                ])
                return (health?.status == 0 ? true : nil, health?.stderr ?? "")
            }

            // n4 holds VMs, and its vote counts: with n2 dead too, n3 and n4 are a quorum.
            #expect(try await bed.vc(bed.storage, ["image", "import", "tiny", Build.tinyImage]).status == 0)
            try await bed.kill("n2")
            // n3 and n4 elect a leader (etcd's election timeout here is 2 s); a create sent
            // meanwhile is refused as having no quorum.
            _ = try await eventually("n3 and n4 to elect a leader", timeout: .seconds(30), every: .milliseconds(500)) {
                let r = try? await bed.etcdctl(["get", "/peerless/nodes/n3"])  // linearizable: needs a quorum
                return (r?.status == 0 ? true : nil, r?.stderr ?? "")
            }
            let created = try await bed.vc(
                "n4", ["cluster", "create", "joined", "--image", "tiny", "--vms", "1", "--node", "n4"])
            #expect(created.status == 0, "\(created)")
            let shown = try await bed.vcJSON("n3", ClusterStatus.self, ["cluster", "show", "joined"])
            #expect(shown.vms.map(\.node) == ["n4"], "\(shown.vms)")
            let running = try await bed.exec("n4", ["virsh", "-c", "qemu:///system", "list", "--name"])
            #expect(running.stdout.contains("joined"), "\(running)")
            #expect(try await bed.vc("n3", ["cluster", "destroy", "joined"]).status == 0)
        }
    }

    /// Nobody runs `vcnode replace`: a voter's node dead past the grace loses its seat to
    /// the first healthy compute node that is no member, once, and that member's vote counts.
    @Test(.timeLimit(.minutes(6)))
    func aDeadVotersSeatIsTakenByAHealthyNodeByItself() async throws {
        try await NodeTestbed.with(computeNodes: 4, replaceDeadMemberAfter: 4) { bed in
            #expect(try await members(bed) == [.init("n1"), .init("n2"), .init("n3")])
            try await bed.kill("n2")
            _ = try await eventually("n4 to take n2's seat", timeout: .seconds(120), every: .seconds(1)) {
                let now = try? await members(bed)
                return (now == [.init("n1"), .init("n3"), .init("n4")] ? true : nil, "\(String(describing: now))")
            }
            let log = (try? String(contentsOfFile: bed.logFile("n4", "vcd"), encoding: .utf8)) ?? ""
            #expect(log.contains("etcd voting member of a dead node removed"), "n4's vcd says why")
            let nodes = try await bed.vcJSON("n3", [NodeSummary].self, ["node", "list"])
            #expect(nodes.first { $0.record.name == "n4" }?.roles.contains(.etcd) == true, "\(nodes)")
            #expect(nodes.first { $0.record.name == "n2" }?.roles.contains(.etcd) == false, "\(nodes)")
            for other in ["n1", "n3", bed.storage] {
                let theirs = (try? String(contentsOfFile: bed.logFile(other, "vcd"), encoding: .utf8)) ?? ""
                #expect(!theirs.contains("this node takes"), "\(other) took no seat too")
            }
            // n4's vote counts: with n3 dead too, n1 and n4 are a quorum.
            try await bed.kill("n3")
            _ = try await eventually("n1 and n4 to make a quorum", timeout: .seconds(30), every: .milliseconds(500)) {
                let r = try? await bed.etcdctl(["get", "/peerless/nodes/n1"])  // linearizable: needs a quorum
                return (r?.status == 0 ? true : nil, r?.stderr ?? "")
            }
        }
    }

    /// `node` comes in configured by nothing but a peer: its vcd.yaml and API token are
    /// removed, and `vcnode join --peer n1`, run on it, writes them from n1's settings and
    /// the token file it is given, waits for vcd on the node, and joins. A wrong token is
    /// refused in one line with nothing written, and so is a second `--peer` once the node
    /// is configured.
    func configureFromAPeer(_ node: String, _ bed: NodeTestbed) async throws {
        let config = "\(NodeTestbed.directory)/\(node)/vcd.yaml"
        let token = "\(bed.stateDirectory(node))/api-token"
        try await bed.kill(node)
        try FileManager.default.removeItem(atPath: config)
        try FileManager.default.removeItem(atPath: token)
        try await bed.restart(node)
        let peer = "\(bed.address("n1")):\(NodeTestbed.apiPort)"
        let vcnode = "\(Build.binDirectory)/vcnode"

        let wrong = "\(NodeTestbed.directory)/wrong-token"
        try "not-the-token\n".write(toFile: wrong, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: wrong) }
        let refused = try await bed.exec(
            node, [vcnode, "join", "--peer", peer, "--token-file", wrong, "--config", config])
        #expect(
            refused.status == 7 && refused.stderr.contains("refused the API token sent")
                && refused.stderr.split(separator: "\n").count == 1, "\(refused)")
        #expect(!FileManager.default.fileExists(atPath: config) && !FileManager.default.fileExists(atPath: token))

        let joining = Task {
            try await bed.exec(
                node, [vcnode, "join", "--peer", peer, "--token-file", bed.tokenFile, "--config", config])
        }
        do {
            _ = try await eventually(
                "\(node)'s vcd.yaml to be written", timeout: .seconds(30), every: .milliseconds(200)
            ) {
                (FileManager.default.fileExists(atPath: config) ? true : nil, "")
            }
        } catch {
            // It gave up before writing anything: what it said.
            Issue.record("vcnode join --peer: \(try await joining.value)")
            throw error
        }
        let written = try String(contentsOfFile: config, encoding: .utf8)
        #expect(written.contains("node: \"\(node)\""), "\(written)")
        #expect(written.contains("underlay: \"\(bed.address(node))\""), "\(written)")
        for endpoint in bed.etcdEndpoints { #expect(written.contains(endpoint), "\(written)") }
        let mode = try FileManager.default.attributesOfItem(atPath: token)[.posixPermissions] as? Int
        #expect(mode == 0o600, "the token file's mode: \(String(describing: mode))")
        #expect(
            try String(contentsOfFile: token, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
                == String(contentsOfFile: bed.tokenFile, encoding: .utf8).trimmingCharacters(
                    in: .whitespacesAndNewlines))
        try await bed.startVCD(node)
        let joined = try await joining.value
        #expect(
            joined.status == 0 && joined.stdout.contains("joined as a client of etcd: 3 healthy"), "\(joined)")
        #expect(joined.stderr.contains("wrote \(config): node \(node) (compute) at \(bed.address(node))"), "\(joined)")
        _ = try await eventually("\(node) to be ready", timeout: .seconds(60), every: .milliseconds(500)) {
            let state = try? await state(bed, node)
            return (state == .ready ? true : nil, "\(String(describing: state))")
        }

        let again = try await bed.exec(
            node, [vcnode, "join", "--peer", peer, "--token-file", bed.tokenFile, "--config", config])
        #expect(
            again.status != 0 && again.stderr.contains("exists: this node is configured already")
                && again.stderr.split(separator: "\n").count == 1, "\(again)")
    }

    /// Restarts `node` with `name` as its configured node name (its own state directory, so
    /// its own machine id).
    func rename(_ node: String, to name: String, _ bed: NodeTestbed) async throws {
        let path = "\(NodeTestbed.directory)/\(node)/vcd.yaml"
        let yaml = try String(contentsOfFile: path, encoding: .utf8).split(
            separator: "\n", omittingEmptySubsequences: false
        )
        .map { $0.hasPrefix("node: ") ? "node: \(name)" : String($0) }.joined(separator: "\n")
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        try await bed.kill(node)
        try await bed.restart(node)
    }

    struct Member: Equatable, CustomStringConvertible {
        var name: String
        var learner = false
        init(_ name: String, learner: Bool = false) {
            self.name = name
            self.learner = learner
        }
        var description: String { learner ? "\(name) (learner)" : name }
    }

    /// The etcd members as etcdctl lists them (`ID, status, name, peers, clients, learner`).
    func members(_ bed: NodeTestbed) async throws -> [Member] {
        let r = try await bed.etcdctl(["member", "list", "--write-out", "simple"])
        return r.stdout.split(separator: "\n").compactMap { line -> Member? in
            let f = line.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            return f.count > 5 ? Member(f[2], learner: f[5] == "true") : nil
        }.sorted { $0.name < $1.name }
    }

    func state(_ bed: NodeTestbed, _ name: String) async throws -> NodeState? {
        try await bed.vcJSON("n3", [NodeSummary].self, ["node", "list"]).first { $0.record.name == name }?.state
    }
}
