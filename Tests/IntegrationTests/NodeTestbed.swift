// Several Peerless nodes on this machine, made and removed by scripts/testbed.sh: compute
// nodes n1…nN and the storage node stor, each in a network namespace with its own address
// (10.99.0.1N, stor 10.99.0.10), its own host name and its own /run, /etc/libvirt,
// /var/lib/libvirt and /var/lib/peerless. Clients (vc, etcdctl) run in the hub namespace,
// which reaches every node. The fixture only calls the script: what a node is lives there.
import Foundation
import Testing
import VCModel

#if canImport(Glibc)
    import Glibc
#endif

/// Which way `partition` cuts a node's links.
enum PartitionDirection: Sendable {
    /// Nothing in, nothing out.
    case both
    /// Nothing reaches the node; what it sends still leaves.
    case inbound
    /// Nothing the node sends leaves; what others send still arrives.
    case outbound
}

/// A testbed of several nodes. `up` removes whatever an earlier run left, and `down` (or
/// `with`, which calls it on every exit path) leaves nothing: no namespace, process, loop
/// device or file.
final class NodeTestbed: Sendable {
    static let script = "\(Build.packageRoot)/scripts/testbed.sh"
    static let directory = ProcessInfo.processInfo.environment["PEERLESS_TESTBED_DIR"] ?? "/var/lib/peerless-testbed"
    static let apiPort = 7480

    /// The compute nodes, n1…nN.
    let nodes: [String]
    /// The storage node (tgtd, the pool; no libvirtd).
    let storage = "stor"
    /// Whether vcd runs on the nodes.
    let runsVCD: Bool

    /// Every node, the storage node first.
    var allNodes: [String] { [storage] + nodes }
    /// The API token every node's vcd accepts.
    var tokenFile: String { "\(Self.directory)/api-token" }
    /// The etcd members' client URLs (the first three compute nodes).
    var etcdEndpoints: [String] { nodes.prefix(3).map { "http://\(address($0)):2379" } }

    private init(nodes: [String], runsVCD: Bool) {
        self.nodes = nodes
        self.runsVCD = runsVCD
    }

    /// Starts `computeNodes` compute nodes and the storage node and waits until every
    /// daemon answers. `extra` appends YAML lines to a node's vcd configuration, by node
    /// name (e.g. `["n1": "capacity: {memoryMiB: 2048}"]`).
    /// `replaceDeadMemberAfter`: vcd's `etcd.replaceDeadMemberAfterSeconds` (off by default
    /// here: the tests that kill a founding member start it again).
    static func up(
        computeNodes: Int = 3, vcd: Bool = true, extra: [String: String] = [:], replaceDeadMemberAfter: Int? = nil
    ) async throws -> NodeTestbed {
        // A testbed that a killed run left behind would make `up` refuse.
        try await removeLeftover()
        let environment =
            ["PEERLESS_BIN=\(Build.binDirectory)", "PEERLESS_TESTBED_OWNER=\(getpid())"]
            + (replaceDeadMemberAfter.map { ["PEERLESS_TESTBED_REPLACE_DEAD_MEMBER_AFTER=\($0)"] } ?? [])
            + extra.sorted { $0.key < $1.key }.map {
                "PEERLESS_TESTBED_EXTRA_\($0.key)=\($0.value)"
            }
        let r = try await run(["up", "\(computeNodes)"] + (vcd ? [] : ["--no-vcd"]), environment: environment)
        guard r.status == 0 else {
            Issue.record("testbed.sh up \(computeNodes) failed:\n\(r.stderr)")
            throw TestbedError.startFailed("testbed.sh up \(computeNodes): \(r.stderr)")
        }
        return NodeTestbed(nodes: (1...computeNodes).map { "n\($0)" }, runsVCD: vcd)
    }

    /// Runs `body` on a started testbed and always takes it down, also when `body` throws.
    static func with(
        computeNodes: Int = 3, vcd: Bool = true, extra: [String: String] = [:], replaceDeadMemberAfter: Int? = nil,
        _ body: (NodeTestbed) async throws -> Void
    ) async throws {
        let bed = try await up(
            computeNodes: computeNodes, vcd: vcd, extra: extra, replaceDeadMemberAfter: replaceDeadMemberAfter)
        do {
            try await body(bed)
        } catch {
            bed.dumpLogs()
            try? await bed.down()
            throw error
        }
        try await bed.down()
    }

    /// Stops and removes everything of the testbed. Safe to call twice.
    func down() async throws {
        try await Self.require(["down"])
    }

    /// Takes down a testbed an earlier run left (or nothing, when there is none). A testbed
    /// whose owner still runs (another `swift test` on this machine) is waited for instead:
    /// there is room for one testbed per machine.
    static func removeLeftover() async throws {
        _ = try await eventually("the testbed's owner to finish", timeout: .seconds(1800), every: .seconds(2)) {
            guard let owner = owner(), owner != getpid(), Glibc.kill(owner, 0) == 0 else { return (true, "") }
            return (nil, "process \(owner) (\(commandLine(owner))) uses the testbed")
        }
        try await require(["down"])
    }

    /// The process that made the testbed, as `up` recorded it.
    static func owner() -> Int32? {
        let text = (try? String(contentsOfFile: "\(directory)/owner", encoding: .utf8)) ?? ""
        return Int32(text.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    // MARK: - addresses

    func address(_ node: String) -> String {
        if node == storage { return "10.99.0.10" }
        guard let k = Int(node.dropFirst()), node.hasPrefix("n") else { return "10.99.0.1" }
        return "10.99.0.\(10 + k)"
    }

    /// The node's vcd API, as clients in the hub reach it.
    func endpoint(_ node: String) -> String { "http://\(address(node)):\(Self.apiPort)" }

    /// Where the node's /var/lib/peerless is on the host.
    func stateDirectory(_ node: String) -> String { "\(Self.directory)/\(node)/peerless" }

    /// The log file of one of the node's daemons (vcd, libvirtd, virtlogd, etcd, tgtd).
    func logFile(_ node: String, _ daemon: String) -> String { "\(Self.directory)/\(node)/logs/\(daemon).log" }

    // MARK: - clients

    /// Runs vc in the hub against `node`'s API with the testbed's token.
    @discardableResult
    func vc(_ node: String, _ args: [String]) async throws -> CommandResult {
        try await hub(
            ["\(Build.binDirectory)/vc"] + args + ["--endpoint", endpoint(node), "--token-file", tokenFile])
    }

    /// Runs vc with `--output json` and decodes its answer; throws if it fails.
    func vcJSON<T: Decodable>(_ node: String, _ type: T.Type, _ args: [String]) async throws -> T {
        let r = try await vc(node, args + ["--output", "json"])
        guard r.status == 0 else {
            throw TestbedError.startFailed("vc \(args.joined(separator: " ")) on \(node): \(r)")
        }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try decoder.decode(T.self, from: Data(r.stdout.utf8))
    }

    /// Runs vcnode in the hub against `node`'s API.
    @discardableResult
    func vcnode(_ node: String, _ args: [String]) async throws -> CommandResult {
        try await hub(
            ["\(Build.binDirectory)/vcnode"] + args + ["--endpoint", endpoint(node), "--token-file", tokenFile])
    }

    /// Runs etcdctl in the hub with every member as an endpoint.
    @discardableResult
    func etcdctl(_ args: [String]) async throws -> CommandResult {
        try await hub(["etcdctl", "--endpoints=\(etcdEndpoints.joined(separator: ","))"] + args)
    }

    /// Runs a command inside a node: its network, mount and UTS namespaces.
    @discardableResult
    func exec(_ node: String, _ command: [String]) async throws -> CommandResult {
        try await Self.run(["exec", node] + command)
    }

    /// Runs a command in the hub namespace (where the clients are).
    @discardableResult
    func hub(_ command: [String]) async throws -> CommandResult {
        try await Self.run(["exec", "hub"] + command)
    }

    // MARK: - failures

    /// SIGKILLs every process of the node (daemons, QEMUs, its namespace holder).
    func kill(_ node: String) async throws { try await Self.require(["kill", node]) }

    /// Starts a killed node's daemons again with the same directories; a wiped node comes
    /// back as a fresh machine.
    func restart(_ node: String) async throws { try await Self.require(["restart", node]) }

    /// Starts the vcd of a node that `restart` brought back without one (it had no vcd.yaml).
    func startVCD(_ node: String) async throws { try await Self.require(["start-vcd", node]) }

    /// Removes a killed node's namespace and files.
    func wipe(_ node: String) async throws { try await Self.require(["wipe", node]) }

    /// SIGSTOPs the node's vcd, or every process of the node.
    func pause(_ node: String, all: Bool = false) async throws {
        try await Self.require(["pause", node] + (all ? ["--all"] : []))
    }

    /// SIGCONTs what `pause` stopped.
    func unpause(_ node: String, all: Bool = false) async throws {
        try await Self.require(["unpause", node] + (all ? ["--all"] : []))
    }

    /// Cuts the listed nodes off from every other node and the hub (they still reach each
    /// other), in one direction or both, or only etcd's ports 2379 and 2380.
    func partition(_ nodes: [String], direction: PartitionDirection = .both, etcdOnly: Bool = false) async throws {
        let way: [String] =
            switch direction {
            case .both: []
            case .inbound: ["--in"]
            case .outbound: ["--out"]
            }
        try await Self.require(["partition"] + nodes + way + (etcdOnly ? ["--etcd-only"] : []))
    }

    /// Removes every partition.
    func heal() async throws { try await Self.require(["heal"]) }

    // MARK: - looking at it

    /// The PIDs in the node's network namespace (its holder, daemons and their children).
    func processes(_ node: String) async throws -> [Int32] {
        try await sh("ip", ["netns", "pids", "pl-\(node)"]).stdout.split(whereSeparator: \.isNewline).compactMap {
            Int32($0)
        }
    }

    /// The one-line-per-node status of the script.
    func status() async throws -> String { try await Self.require(["status"]).stdout }

    /// What the testbed has running and what its files back, taken while it is up.
    struct Footprint: Sendable {
        /// PID → start time (clock ticks after boot), so that a reused PID is not taken for ours.
        var processes: [Int32: UInt64]
        /// "INODE MAJOR:MINOR" of every file under the testbed directory.
        var files: Set<String>
    }

    func footprint() async throws -> Footprint {
        var processes: [Int32: UInt64] = [:]
        for node in allNodes {
            for pid in try await self.processes(node) { processes[pid] = Self.startTime(pid) }
        }
        let stats = try await sh(
            "find",
            [Self.directory, "-xdev", "-type", "f", "-size", "+0", "-exec", "stat", "-c", "%i %Hd:%Ld", "{}", "+"])
        return Footprint(
            processes: processes,
            files: Set(stats.stdout.split(whereSeparator: \.isNewline).map(String.init)))
    }

    /// Everything of `footprint`, or of any testbed, still there. Empty means clean.
    static func leftovers(after footprint: Footprint) async throws -> [String] {
        var found: [String] = []
        let spaces = try await sh("ip", ["netns", "list"]).stdout.split(whereSeparator: \.isNewline)
        found += spaces.compactMap { $0.split(separator: " ").first }.filter { $0.hasPrefix("pl-") }.map {
            "network namespace \($0)"
        }
        if FileManager.default.fileExists(atPath: directory) { found.append("directory \(directory)") }
        let loops = try await sh(
            "losetup", ["--list", "--noheadings", "--raw", "-O", "NAME,BACK-INO,BACK-MAJ:MIN,BACK-FILE"])
        for line in loops.stdout.split(whereSeparator: \.isNewline) {
            // --raw writes blanks as \x20.
            let fields = line.replacingOccurrences(of: "\\x20", with: "").split(separator: " ").map(String.init)
            guard fields.count >= 3 else { continue }
            let backing = fields.count > 3 ? fields[3] : "?"
            if footprint.files.contains("\(fields[1]) \(fields[2])") || backing.hasPrefix(directory + "/") {
                found.append("loop device \(fields[0]) on \(backing)")
            }
        }
        // A zombie is dead (its parent, PID 1 for the orphaned daemons, reaps it soon): not a leftover.
        for (pid, started) in footprint.processes.sorted(by: { $0.key < $1.key })
        where startTime(pid) == started && state(pid) != "Z" {
            found.append("process \(pid): \(commandLine(pid))")
        }
        // Also any process, seen or not, that names a testbed file (etcd's data directory, vcd's configuration).
        let all = (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.compactMap(Int32.init) ?? []
        for pid in all where footprint.processes[pid] == nil && commandLine(pid).contains(directory + "/") {
            found.append("process \(pid): \(commandLine(pid))")
        }
        return found
    }

    /// Prints the end of every daemon log, for a failed test.
    func dumpLogs() {
        for node in allNodes {
            for daemon in ["vcd", "libvirtd", "etcd", "tgtd"]
            where FileManager.default.fileExists(atPath: logFile(node, daemon)) {
                let lines = daemon == "vcd" ? 60 : 30
                print("---- \(daemon) on \(node) ----\n\(tail(logFile(node, daemon), lines: lines))")
            }
        }
    }

    // MARK: - the script

    @discardableResult
    private static func run(_ args: [String], environment: [String] = []) async throws -> CommandResult {
        // env(1) passes the script its settings: `sh` runs a program with the caller's
        // environment only.
        try await sh("/usr/bin/env", environment + [script] + args)
    }

    /// Runs the script and throws with its output when it fails.
    @discardableResult
    private static func require(_ args: [String]) async throws -> CommandResult {
        let r = try await run(args)
        guard r.status == 0 else {
            throw TestbedError.startFailed("testbed.sh \(args.joined(separator: " ")): \(r)")
        }
        return r
    }

    /// Field 22 of /proc/PID/stat, or nil when there is no such process.
    private static func startTime(_ pid: Int32) -> UInt64? {
        let fields = statFields(pid)
        return fields.count > 19 ? UInt64(fields[19]) : nil
    }

    /// The process's state letter (R, S, T for stopped, Z for zombie), or nil when it is gone.
    static func state(_ pid: Int32) -> String? { statFields(pid).first }

    /// /proc/PID/stat after "(comm)", which may itself hold blanks: field 3 (state) onwards.
    private static func statFields(_ pid: Int32) -> [String] {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let end = stat.lastIndex(of: ")")
        else { return [] }
        return stat[stat.index(after: end)...].split(separator: " ").map(String.init)
    }

    private static func commandLine(_ pid: Int32) -> String {
        let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") ?? Data()
        return String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
    }
}
