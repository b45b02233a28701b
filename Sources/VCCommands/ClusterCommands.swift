import ArgumentParser
import Foundation
import VCClient
import VCModel

extension PlacementStrategy: ExpressibleByArgument {}

struct ClusterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster", abstract: "Virtual clusters: sets of VMs with a private network.",
        subcommands: [
            ClusterCreate.self, ClusterList.self, ClusterShow.self, ClusterSuspend.self, ClusterResume.self,
            ClusterDestroy.self, ClusterWait.self,
        ])
}

struct ClusterCreate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create", abstract: "Create a virtual cluster and start its VMs.",
        discussion: """
            Each VM boots from its own copy-on-write snapshot of the image, exported over iSCSI. \
            VMs are named NAME-1 … NAME-N, get their addresses by DHCP on the cluster's private \
            network, and resolve each other as NAME-i.NAME.vc. A failure midway undoes everything.
            """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Cluster name (lowercase letters, digits, '-'; at most 40).") var name: String
    @Option(help: "Golden image to boot from.") var image: String
    @Option(help: "Number of VMs (1-200).") var vms: Int
    @Option(help: "vCPUs per VM.") var vcpus: Int = 1
    @Option(help: "Memory per VM, e.g. 256M or 1G.") var memory: String = "256M"
    @Option(
        name: .customLong("ssh-key"), help: "A public key file to install in the VMs (repeatable).", completion: .file()
    )
    var sshKeys: [String] = []
    @Option(help: "How VMs are laid out over the nodes: spread (the default) or pack.")
    var placement: PlacementStrategy?
    @Option(help: "Put every VM on this node.") var node: String?

    /// Checked in `run`, not `validate`, so that a bad value gets one line, not a usage page.
    func spec(keys: [String]) throws -> ClusterSpec {
        let spec = ClusterSpec(
            name: name, image: image, vms: vms, vcpus: vcpus, memoryMiB: try ByteSize.parseMiB(memory), sshKeys: keys,
            placement: placement, node: node)
        try spec.validate()
        return spec
    }

    func run() async throws {
        try await CLI.run {
            _ = try spec(keys: [])
            var keys: [String] = []
            for file in sshKeys {
                guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                    throw ValidationError("cannot read \(file)")
                }
                keys += text.split(whereSeparator: \.isNewline).map { String($0) }.filter {
                    !$0.isEmpty && !$0.hasPrefix("#")
                }
            }
            try await ClusterOps.create(try spec(keys: keys), global: global)
        }
    }
}

enum ClusterOps {
    static func create(_ spec: ClusterSpec, global: GlobalOptions) async throws {
        let view = ProgressView(quiet: global.output == .json)
        try await global.client.operation(.post, "/v1/clusters", body: spec) { view.show($0) }
        try await show(spec.name, global: global)
    }

    static func show(_ name: String, global: GlobalOptions) async throws {
        let status: ClusterStatus = try await global.client.get("/v1/clusters/\(name)")
        print(global.output == .json ? Render.json(status) : Render.cluster(status))
    }

    /// Runs suspend, resume or destroy and reports the outcome.
    static func change(_ name: String, _ method: VCDClient.Method, _ path: String, global: GlobalOptions) async throws
        -> OperationEvent
    {
        let view = ProgressView(quiet: global.output == .json)
        return try await global.client.operation(method, path, body: Optional<String>.none) { view.show($0) }
    }
}

struct ClusterList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "List virtual clusters.",
        discussion: """
            With --output json: an array of summaries sorted by name, each a cluster's record with \
            only spec (name, image, vms, vcpus, memoryMiB), state, network.cidr, vms (each VM's \
            name and node), createdAt, updatedAt and message, under the keys of the full record. \
            'vc cluster show NAME --output json' gives the whole record and each VM's domain state.
            """, aliases: ["ls"])

    @OptionGroup var global: GlobalOptions

    func run() async throws {
        try await CLI.run {
            let clusters: [ClusterSummary] = try await global.client.get("/v1/clusters?view=summary")
            if global.output == .json { return print(Render.json(clusters)) }
            let rows = clusters.map {
                [
                    $0.name, $0.state.rawValue, $0.spec.image, "\($0.spec.vms)", "\($0.spec.memoryMiB) MiB",
                    $0.network.cidr, $0.nodes.joined(separator: ","),
                ]
            }
            print(Render.table(["NAME", "STATE", "IMAGE", "VMS", "MEMORY/VM", "NETWORK", "NODES"], rows))
        }
    }
}

struct ClusterShow: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show", abstract: "Show a virtual cluster and its VMs.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Cluster name.") var name: String

    func run() async throws {
        try await CLI.run { try await ClusterOps.show(name, global: global) }
    }
}

struct ClusterSuspend: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "suspend", abstract: "Save every VM's memory to the pool and stop it.",
        discussion: "A suspended cluster resumes after a restart of vcd, libvirtd or the whole machine.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Cluster name.") var name: String

    func run() async throws {
        try await CLI.run {
            let final = try await ClusterOps.change(name, .post, "/v1/clusters/\(name)/suspend", global: global)
            if global.output == .json { return try await ClusterOps.show(name, global: global) }
            print(final.message ?? "suspended \(name)")
        }
    }
}

struct ClusterResume: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resume", abstract: "Restore every VM of a suspended cluster from its saved memory.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Cluster name.") var name: String

    func run() async throws {
        try await CLI.run {
            let final = try await ClusterOps.change(name, .post, "/v1/clusters/\(name)/resume", global: global)
            if global.output == .json { return try await ClusterOps.show(name, global: global) }
            print(final.message ?? "resumed \(name)")
        }
    }
}

struct ClusterDestroy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "destroy",
        abstract: "Stop and remove a cluster: VMs, disks, exports, network and catalog entries.",
        aliases: ["rm"])

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Cluster name.") var name: String

    func run() async throws {
        try await CLI.run {
            let final = try await ClusterOps.change(name, .delete, "/v1/clusters/\(name)", global: global)
            if global.output == .json { return print(Render.json(["destroyed": name])) }
            print(final.message ?? "destroyed \(name)")
        }
    }
}

struct ClusterWait: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wait", abstract: "Wait until every VM of a cluster printed a text on its serial console.",
        discussion: "For scripts: e.g. vc cluster wait demo --console PEERLESS-TINY-BOOTED --timeout 300")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Cluster name.") var name: String
    @Option(help: "Text each VM's console must show.") var console: String
    @Option(help: "Seconds to wait at most.") var timeout: Int = 600

    func validate() throws {
        guard timeout > 0 else { throw ValidationError("--timeout must be positive") }
        guard !console.isEmpty else { throw ValidationError("--console must not be empty") }
    }

    func run() async throws {
        try await CLI.run {
            let status: ClusterStatus = try await global.client.get("/v1/clusters/\(name)")
            var waiting = status.vms.map(\.name)
            var seen: [String: String] = [:]
            let deadline = ContinuousClock.now + .seconds(timeout)
            while !waiting.isEmpty {
                for vm in waiting {
                    let (bytes, _) = try await global.client.raw(
                        "/v1/vms/\(vm)/console?offset=0", header: "X-Console-Offset")
                    let text = String(decoding: bytes, as: UTF8.self)
                    if let line = text.split(whereSeparator: \.isNewline).first(where: { $0.contains(console) }) {
                        seen[vm] = String(line).trimmingCharacters(in: .whitespacesAndNewlines)
                        if global.output == .table { print("\(vm): \(seen[vm]!)") }
                    }
                }
                waiting.removeAll { seen[$0] != nil }
                if waiting.isEmpty { break }
                guard ContinuousClock.now < deadline else {
                    CLI.fail(
                        "timed out after \(timeout) s: \(waiting.joined(separator: ", ")) did not print '\(console)'; see 'vc vm console \(waiting[0])'",
                        code: 1)
                }
                try await Task.sleep(for: .seconds(1))
            }
            if global.output == .json { print(Render.json(seen)) }
        }
    }
}
