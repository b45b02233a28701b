import ArgumentParser
import Foundation
import VCModel

struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node", abstract: "Physical nodes of the cluster.", subcommands: [NodeList.self])
}

struct NodeList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List every node the cluster knows: ready, cordoned or dead, with its roles and load.",
        aliases: ["ls"])

    @OptionGroup var global: GlobalOptions

    func run() async throws {
        try await CLI.run {
            let nodes: [NodeSummary] = try await global.client.get("/v1/nodes")
            if global.output == .json { return print(Render.json(nodes)) }
            let rows = nodes.map { n -> [String] in
                let r = n.record
                let compute = r.has(.compute)
                return [
                    r.name, n.state.rawValue, n.roles.map(\.rawValue).joined(separator: ","),
                    compute ? "\(r.capacity.cpus)" : "-", compute ? "\(r.capacity.memoryMiB) MiB" : "-",
                    compute ? "\(n.committedMiB) MiB" : "-", "\(n.vms)", r.underlay ?? r.api,
                ]
            }
            print(Render.table(["NAME", "STATE", "ROLES", "CPUS", "MEMORY", "COMMITTED", "VMS", "ADDRESS"], rows))
        }
    }
}

/// `vcnode status`: what a hardware technician checks on one node.
public struct NodeStatusCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Health of this node: its daemons, pool, capacity and VMs.")

    @OptionGroup var global: GlobalOptions

    public init() {}

    public func run() async throws {
        try await CLI.run {
            let s: NodeStatus = try await global.client.get("/v1/node")
            // Exit 5 with JSON too: a script must not take an unhealthy node for a healthy one.
            let unhealthy = s.daemons.contains { !$0.healthy }
            if global.output == .json {
                print(Render.json(s))
                if unhealthy { throw ExitCode(5) }
                return
            }
            let r = s.record
            let etcd = Self.unknown(because: "etcd", s)
            let libvirt = Self.unknown(because: "libvirtd", s)
            let committed = s.committedMemoryMiB.map { "\($0) MiB committed" } ?? "committed \(etcd)"
            let clusters = s.clusters.map(String.init) ?? etcd
            let running = s.runningVMs.map { "\($0) VM(s) running" } ?? "VMs running \(libvirt)"
            print(
                Render.fields([
                    ("Node", r.name),
                    ("Initiator", r.initiator),
                    ("Accelerator", "\(r.accelerator.kind.rawValue) (\(r.accelerator.reason))"),
                    (
                        "Capacity",
                        "\(r.capacity.cpus) CPUs, \(r.capacity.memoryMiB) MiB; \(committed)"
                    ),
                    (
                        "Pool",
                        s.pool.map {
                            "\($0.path) (\($0.filesystem), \($0.backing)), \(ByteSize.describe(bytes: $0.freeBytes)) free of \(ByteSize.describe(bytes: $0.sizeBytes))"
                        } ?? "none here (no storage role: disks are on the storage node)"
                    ),
                    ("Clusters", "\(clusters), \(running)"),
                    ("vcd", "\(r.version), up since \(Render.date(r.startedAt))"),
                ]))
            print()
            print(
                Render.table(
                    ["DAEMON", "HEALTH", "DETAIL"],
                    s.daemons.map { [$0.name, $0.healthy ? "ok" : "FAILED", $0.detail] }))
            if unhealthy { throw ExitCode(5) }
        }
    }

    /// "unknown (etcd is not answering)": the count depends on `daemon`, which failed.
    static func unknown(because daemon: String, _ s: NodeStatus) -> String {
        let healthy = s.daemons.first { $0.name == daemon }?.healthy ?? false
        return healthy ? "unknown" : "unknown (\(daemon) is not answering)"
    }
}

/// The node agent's command tree.
public struct VCNode: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "vcnode", abstract: "Peerless node agent, for the hardware technician.",
        discussion: "Talks to the vcd of this node over its local socket.",
        subcommands: [
            NodeStatusCommand.self, NodeCordonCommand.self, NodeUncordonCommand.self, NodeDrainCommand.self,
            NodeRemoveCommand.self, NodeJoinCommand.self, NodeReplaceCommand.self,
        ])

    public init() {}
}

/// The node a hot-swap command acts on: the one named, else the node whose vcd answers.
enum NodeTarget {
    static func resolve(_ name: String?, global: GlobalOptions) async throws -> String {
        if let name { return name }
        let status: NodeStatus = try await global.client.get("/v1/node")
        return status.record.name
    }

    static func printSummary(_ n: NodeSummary, global: GlobalOptions) {
        if global.output == .json { return print(Render.json(n)) }
        let why = n.cordonReason.map { " (\($0))" } ?? ""
        print("node \(n.record.name) is \(n.state.rawValue)\(why), \(n.vms) VM(s) placed on it")
    }
}

struct NodeCordonCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cordon", abstract: "Close a node to new VMs; what runs there keeps running.",
        discussion: "Creates and resumes place nothing on a cordoned node. 'vcnode drain' also moves what runs there.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The node; this node when omitted.") var node: String?
    @Option(help: "Why, as 'vc node list' shows it.") var reason: String?

    func run() async throws {
        try await CLI.run {
            let name = try await NodeTarget.resolve(node, global: global)
            let n: NodeSummary = try await global.client.post(
                "/v1/nodes/\(name)/cordon", body: CordonRequest(reason: reason), timeout: .seconds(30))
            NodeTarget.printSummary(n, global: global)
        }
    }
}

struct NodeUncordonCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "uncordon", abstract: "Open a cordoned or drained node to new VMs again.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The node; this node when omitted.") var node: String?

    func run() async throws {
        try await CLI.run {
            let name = try await NodeTarget.resolve(node, global: global)
            let n: NodeSummary = try await global.client.delete("/v1/nodes/\(name)/cordon")
            NodeTarget.printSummary(n, global: global)
        }
    }
}

struct NodeDrainCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drain",
        abstract: "Cordon a node and move every VM that runs there to other nodes while it runs.",
        discussion: """
            Each VM moves by live migration, with one progress line per VM (its time and how long \
            the guest was paused). When a live migration fails, the VM is suspended to the storage \
            node and resumed on its new node instead, and the line says so. A cluster whose VMs \
            fit on no other node refuses the drain, with nothing changed; --force suspends that \
            cluster instead. The node stays cordoned afterwards: 'vcnode uncordon' opens it again.
            """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The node; this node when omitted.") var node: String?
    @Flag(help: "Suspend the clusters whose VMs fit on no other node instead of refusing.") var force = false

    func run() async throws {
        try await CLI.run {
            let name = try await NodeTarget.resolve(node, global: global)
            let view = ProgressView(quiet: global.output == .json)
            let final = try await global.client.operation(
                .post, "/v1/nodes/\(name)/drain", body: DrainRequest(force: force)
            ) { view.show($0) }
            if global.output == .json {
                let nodes: [NodeSummary] = try await global.client.get("/v1/nodes")
                if let n = nodes.first(where: { $0.record.name == name }) { print(Render.json(n)) }
                return
            }
            print(final.message ?? "node \(name) is drained")
        }
    }
}

struct NodeRemoveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove",
        abstract: "Take a drained or dead node out of the cluster, its etcd member first.",
        discussion: """
            The node must run nothing: dead, or cordoned with no VM placed on it ('vcnode drain' \
            first). Its etcd member, when it has one, is removed first, and only when the voting \
            members left keep a quorum of healthy ones. Its records go, and its vcd, if it still \
            runs, does not register again under that name. Refused with nothing changed otherwise.
            """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The node to remove (named, never implied).") var node: String

    func run() async throws {
        try await CLI.run {
            let r: NodeRemovedResponse = try await global.client.delete("/v1/nodes/\(node)")
            print(global.output == .json ? Render.json(r) : r.message)
        }
    }
}

struct NodeJoinCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "join",
        abstract: "Give this node a voting etcd member when the cluster has fewer than three healthy ones.",
        discussion: """
            Run on the new node, whose vcd is started with the cluster's etcd endpoints and token \
            (it is in the cluster once it registers). When fewer than three etcd voting members \
            answer, this node's member is added as a learner, started by vcd with an empty data \
            directory, and promoted to a voting member once it has caught up; otherwise the node \
            stays a client of etcd. Refused, with nothing changed, while a voting member that does \
            not answer is listed (etcd adds no member then: 'vcnode replace' it) or another \
            learner is catching up. A learner that does not catch up is removed again. Run \
            again, it finishes what an interrupted run left.

            With --peer, a node with no vcd configuration yet gets it first from a node of the \
            cluster: the etcd members, prefix and timers, the lease TTL and the network settings, \
            with this node's own name, address and role, written to --config; the API token \
            comes from --token-file (copied from any node) and is put where vcd reads it, \
            readable by root alone. Then it waits for vcd on this node to start and joins.
            """)

    @OptionGroup var global: GlobalOptions

    @Option(
        help: ArgumentHelp(
            "Configure this node from a node of the cluster first: that node's API (the token is --token-file's).",
            valueName: "host[:port]"))
    var peer: String?

    @Option(help: "With --peer: the vcd configuration file to write.", completion: .file())
    var config = Self.defaultConfig
    static let defaultConfig = "/etc/peerless/vcd.yaml"

    @Option(help: "With --peer: this node's name (default: from its host name).")
    var name: String?

    @Option(
        help: ArgumentHelp(
            "With --peer: this node's address between the nodes (default: the one it reaches the peer from).",
            valueName: "address"))
    var underlay: String?

    @Option(help: "With --peer: what this node does, compute or storage.")
    var role: NodeRole = .compute

    @Option(help: "With --peer: seconds to wait for vcd on this node to start (0: write the configuration only).")
    var wait = 120

    /// Checked in `run`, not `validate`, so that a bad value gets one line, not a usage page.
    func check() throws {
        if peer == nil,
            name != nil || underlay != nil || role != .compute || config != Self.defaultConfig || wait != 120
        {
            throw ValidationError(
                "--name, --underlay, --role, --config and --wait configure a node from a peer: give --peer too")
        }
        if role == .etcd { throw ValidationError("--role: compute or storage (an etcd member is what join gives)") }
        if let name { try NameRule.checkNode(name) }
    }

    func run() async throws {
        try await CLI.run {
            try check()
            if let peer {
                try await PeerJoin(
                    peer: peer, config: config, name: name, underlay: underlay, role: role, waitSeconds: wait,
                    global: global
                ).run()
            } else {
                try await NodeSeat.take(replacing: nil, global: global)
            }
        }
    }
}

extension NodeRole: ExpressibleByArgument {}

struct NodeReplaceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replace",
        abstract: "Take a dead or drained node out and give this node its place, its etcd seat included.",
        discussion: """
            Run on the new node. OLD is removed as 'vcnode remove OLD' does (it must be dead, or \
            drained; its etcd member goes first), then this node joins as 'vcnode join' does: \
            OLD's etcd seat becomes this node's, as a learner promoted once caught up. The \
            scheduler places VMs on this node from then on. Refused, with nothing changed, when \
            OLD is alive and not drained or when etcd could not take a new member after OLD is gone.
            """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The node whose place this node takes.") var old: String

    func run() async throws {
        try await CLI.run { try await NodeSeat.take(replacing: old, global: global) }
    }
}

/// `join` and `replace`: both run on the joining node's own vcd.
enum NodeSeat {
    static func take(replacing old: String?, global: GlobalOptions) async throws {
        let name = try await NodeTarget.resolve(nil, global: global)
        let view = ProgressView(quiet: global.output == .json)
        let final = try await global.client.operation(
            .post, "/v1/nodes/\(name)/join", body: JoinRequest(replacing: old)
        ) { view.show($0) }
        if global.output == .json {
            let nodes: [NodeSummary] = try await global.client.get("/v1/nodes")
            if let n = nodes.first(where: { $0.record.name == name }) { print(Render.json(n)) }
            return
        }
        print(final.message ?? "node \(name) joined")
    }
}
