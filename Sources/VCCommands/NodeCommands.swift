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
        subcommands: [NodeStatusCommand.self])

    public init() {}
}
