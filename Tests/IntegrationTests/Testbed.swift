// Integration tests run the real daemons: etcd, libvirtd and virtlogd as `make test`
// starts them, plus a tgtd of each testbed's own; vcd and vc as built binaries. A
// testbed owns everything it makes (etcd prefix, pool, state, tgtd, vcd) and removes it
// on every exit path.
import Foundation
import Subprocess
import Testing
import VCModel

#if canImport(System)
    import System
#else
    import SystemPackage
#endif

enum Build {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    static let binDirectory = ProcessInfo.processInfo.environment["PEERLESS_BIN"] ?? "\(packageRoot)/.build/debug"
    static let tinyImage = "\(packageRoot)/images/build/tiny.img"
    static let debianImage = "\(packageRoot)/images/build/debian.img"
    static let tinyKernel = "\(packageRoot)/images/build/tiny-vmlinuz"
    static let tinyInitrd = "\(packageRoot)/images/build/tiny-initrd.img"
    static let bootMarker = "PEERLESS-TINY-BOOTED"
    static let wroteMarker = "PEERLESS-TINY-WROTE"
}

struct CommandResult: CustomStringConvertible {
    var status: Int32
    var stdout: String
    var stderr: String
    var description: String { "exit \(status)\nstdout: \(stdout)\nstderr: \(stderr)" }
}

/// Runs a program to completion (no shell) and returns its status and output.
@discardableResult
func sh(_ program: String, _ args: [String]) async throws -> CommandResult {
    let executable: Executable = program.hasPrefix("/") ? .path(FilePath(program)) : .name(program)
    let r = try await Subprocess.run(
        executable, arguments: Arguments(args), output: .string(limit: 8 << 20), error: .string(limit: 8 << 20))
    let status: Int32
    switch r.terminationStatus {
    case .exited(let code): status = code
    case .signaled(let signal): status = 128 + signal
    }
    return CommandResult(status: status, stdout: r.standardOutput, stderr: r.standardError)
}

/// A child that outlives the call that started it (vcd): posix_spawn with its output
/// appended to a log file, reaped with waitpid.
final class ChildProcess {
    let pid: pid_t
    private var exited = false

    init(_ path: String, _ args: [String], log: String, environment: [String: String] = [:]) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_APPEND | O_CREAT, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv = ([path] + args).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let env =
            ProcessInfo.processInfo.environment.merging(environment) { $1 }.map { strdup("\($0.key)=\($0.value)") } + [
                nil
            ]
        defer { env.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, nil, argv, env)
        guard rc == 0 else { throw TestbedError.startFailed("posix_spawn \(path): \(String(cString: strerror(rc)))") }
        self.pid = pid
    }

    var isRunning: Bool {
        if exited { return false }
        var status: Int32 = 0
        if waitpid(pid, &status, WNOHANG) == pid { exited = true }
        return !exited
    }

    /// Sends `signal` and waits until the process is gone.
    func stop(_ signal: Int32) {
        guard isRunning else { return }
        kill(pid, signal)
        var status: Int32 = 0
        _ = waitpid(pid, &status, 0)
        exited = true
    }
}

/// Polls `check` until it returns a value or the deadline passes; the failure says what
/// was last seen.
func eventually<T>(
    _ what: String, timeout: Duration = .seconds(120), every: Duration = .milliseconds(500),
    _ check: () async throws -> (T?, String)
) async throws -> T {
    let deadline = ContinuousClock.now + timeout
    var last = ""
    while ContinuousClock.now < deadline {
        let (value, seen) = try await check()
        if let value { return value }
        last = seen
        try await Task.sleep(for: every)
    }
    Issue.record("timed out after \(timeout) waiting for \(what); last seen: \(last)")
    throw TestbedError.timeout(what)
}

enum TestbedError: Error {
    case timeout(String)
    case startFailed(String)
}

/// One vcd node under test with everything of its own.
final class Testbed {
    let id: String
    let root: String
    let prefix: String
    let node: String
    let apiPort: Int
    let socket: String
    let tgtControlPort: Int
    let iscsiPort: Int
    let networkPrefix: String
    let bridgePrefix: String
    private(set) var vcd: ChildProcess?
    private var tgtdRunning = false
    var poolFilesystem = "btrfs"

    var poolPath: String { "\(root)/pool" }
    var statePath: String { "\(root)/state" }
    var configPath: String { "\(root)/vcd.yaml" }
    var logPath: String { "\(root)/vcd.log" }
    var initiator: String { Naming.initiatorIQN(node: node) }

    init() {
        id = String(UUID().uuidString.lowercased().prefix(6))
        root = "/var/tmp/peerless-it-\(id)"
        prefix = "/peerless-it-\(id)"
        node = "it-\(id)"
        apiPort = Int.random(in: 20000...29999)
        socket = "\(root)/vcd.sock"
        tgtControlPort = Int.random(in: 1000...1999)
        iscsiPort = Int.random(in: 3300...3899)
        // Bridges and addresses are host-wide: testbeds running side by side must not meet.
        networkPrefix = "10.\(Int.random(in: 100...250))"
        bridgePrefix = "t" + String((0..<4).map { _ in "abcdefghijklmnopqrstuvwxyz".randomElement()! })
    }

    /// Runs `body` with a started testbed and always tears it down.
    static func with(
        hooks: String = "", accelerator: String = "tcg", poolFilesystem: String = "btrfs",
        _ body: (Testbed) async throws -> Void
    ) async throws {
        let bed = Testbed()
        bed.poolFilesystem = poolFilesystem
        do {
            try await bed.start(hooks: hooks, accelerator: accelerator)
            try await body(bed)
        } catch {
            bed.dumpLog()
            await bed.teardown()
            throw error
        }
        await bed.teardown()
    }

    func configuration(
        hooks: String, accelerator: String, etcdEndpoint: String = "http://127.0.0.1:2379",
        libvirtURI: String = "qemu:///system"
    ) -> String {
        """
        node: \(node)
        stateDirectory: \(statePath)
        api:
          port: \(apiPort)
          socket: \(socket)
        etcd:
          endpoint: \(etcdEndpoint)
          prefix: \(prefix)
        libvirtURI: "\(libvirtURI)"
        pool:
          path: \(poolPath)
          embeddedImage: \(root)/pool.img
          embeddedSizeGiB: 8
          embeddedFilesystem: \(poolFilesystem)
        network:
          prefix: "\(networkPrefix)"
          bridgePrefix: \(bridgePrefix)
        iscsi:
          portal: 127.0.0.1:\(iscsiPort)
          tgtControlPort: \(tgtControlPort)
        accelerator:
          mode: \(accelerator)
          probeKernel: \(Build.tinyKernel)
          probeInitrd: \(Build.tinyInitrd)
        leaseTTLSeconds: 4
        \(hooks)
        """
    }

    func start(hooks: String = "", accelerator: String = "tcg") async throws {
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        try await startTGTD()
        try configuration(hooks: hooks, accelerator: accelerator).write(
            toFile: configPath, atomically: true, encoding: .utf8)
        try await startVCD()
    }

    func startTGTD() async throws {
        let r = try await sh("tgtd", ["-C", "\(tgtControlPort)", "--iscsi", "portal=127.0.0.1:\(iscsiPort)"])
        guard r.status == 0 else { throw TestbedError.startFailed("tgtd: \(r)") }
        tgtdRunning = true
        _ = try await eventually("tgtd to answer", timeout: .seconds(10), every: .milliseconds(100)) {
            let r = try await tgtadm(["--op", "show", "--mode", "system"])
            return (r.status == 0 ? true : nil, r.stderr)
        }
    }

    /// Stops this testbed's tgtd (it ignores SIGTERM; the management call ends it).
    func stopTGTD() async throws {
        guard tgtdRunning else { return }
        for t in try await targets() {
            try await tgtadm(["--op", "delete", "--mode", "target", "--tid", "\(t.tid)", "--force"])
        }
        try await tgtadm(["--op", "delete", "--mode", "system"])
        tgtdRunning = false
    }

    @discardableResult
    func tgtadm(_ args: [String]) async throws -> CommandResult {
        try await sh("tgtadm", ["-C", "\(tgtControlPort)", "--lld", "iscsi"] + args)
    }

    /// Targets of this testbed's tgtd: (tid, iqn) pairs.
    func targets() async throws -> [(tid: Int, iqn: String)] {
        let out = try await tgtadm(["--op", "show", "--mode", "target"]).stdout
        return out.split(separator: "\n").filter { $0.hasPrefix("Target ") }.compactMap { line in
            let parts = line.dropFirst("Target ".count).split(separator: ":", maxSplits: 1)
            guard parts.count == 2, let tid = Int(parts[0]) else { return nil }
            return (tid, parts[1].trimmingCharacters(in: .whitespaces))
        }
    }

    /// Starts vcd and waits until it answers; throws with its log if it exits.
    func startVCD(configFile: String? = nil) async throws {
        let p = try ChildProcess(
            "\(Build.binDirectory)/vcd", ["-c", configFile ?? configPath, "--log-level", "debug"], log: logPath)
        vcd = p
        _ = try await eventually("vcd to answer", timeout: .seconds(90)) { () -> (Bool?, String) in
            guard p.isRunning else { throw TestbedError.startFailed("vcd exited: \(tail(logPath))") }
            let r = try await vc(["node", "list"])
            return (r.status == 0 ? true : nil, r.stderr)
        }
    }

    /// Stops vcd: SIGTERM for a graceful stop, SIGKILL for a crash.
    func stopVCD(signal: Int32 = SIGTERM) {
        vcd?.stop(signal)
        vcd = nil
    }

    /// Runs vc against this testbed's vcd.
    @discardableResult
    func vc(_ args: [String]) async throws -> CommandResult {
        let v = vcInvocation(args)
        return try await sh(v.program, v.arguments)
    }

    /// The vc command line for this testbed, for running it from another task.
    func vcInvocation(_ args: [String]) -> (program: String, arguments: [String]) {
        ("\(Build.binDirectory)/vc", args + ["--endpoint", "unix://\(socket)"])
    }

    func vcJSON<T: Decodable>(_ type: T.Type, _ args: [String]) async throws -> T {
        let r = try await vc(args + ["--output", "json"])
        guard r.status == 0 else { throw TestbedError.startFailed("vc \(args.joined(separator: " ")): \(r)") }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try decoder.decode(T.self, from: Data(r.stdout.utf8))
    }

    func importTiny(as name: String = "tiny") async throws {
        let r = try await vc(["image", "import", name, Build.tinyImage])
        #expect(r.status == 0, "\(r)")
    }

    func console(_ vm: String) async throws -> String {
        try await vc(["vm", "console", vm]).stdout
    }

    /// Waits until every VM printed `marker`; returns each VM's marker line.
    func waitForConsoles(_ vms: [String], marker: String, timeout: Duration = .seconds(300)) async throws -> [String:
        String]
    {
        try await eventually("\(marker) on \(vms.joined(separator: ", "))", timeout: timeout, every: .seconds(1)) {
            var lines: [String: String] = [:]
            for vm in vms {
                if let line = try await console(vm).split(whereSeparator: \.isNewline).first(where: {
                    $0.contains(marker)
                }) {
                    lines[vm] = line.trimmingCharacters(in: .whitespacesAndNewlines)
                }
            }
            return (lines.count == vms.count ? lines : nil, "\(lines.keys.sorted()) of \(vms)")
        }
    }

    func etcdKeys() async throws -> [String] {
        try await sh("etcdctl", ["get", "--prefix", prefix, "--keys-only"]).stdout.split(separator: "\n").map(
            String.init
        )
        .filter { !$0.isEmpty }
    }

    func domainNames() async throws -> [String] {
        try await sh("virsh", ["-c", "qemu:///system", "list", "--all", "--name"]).stdout.split(separator: "\n").map(
            String.init
        )
        .filter { !$0.isEmpty }
    }

    func domainState(_ name: String) async throws -> String {
        try await sh("virsh", ["-c", "qemu:///system", "domstate", name]).stdout.trimmingCharacters(
            in: .whitespacesAndNewlines)
    }

    /// nftables' tables as "FAMILY NAME".
    func nftTables() async throws -> [String] {
        try await sh("nft", ["list", "tables"]).stdout.split(separator: "\n").map {
            $0.replacingOccurrences(of: "table ", with: "")
        }
    }

    func bridgeExists(_ name: String) async throws -> Bool {
        try await sh("ip", ["link", "show", "dev", name]).status == 0
    }

    /// Every trace a cluster could leave on the host and in the catalog. Empty means clean.
    func leftovers(of cluster: String, vms: Int, bridge: String?) async throws -> [String] {
        var found: [String] = []
        let names = (1...vms).map { "\(cluster)-\($0)" }
        found += try await domainNames().filter { names.contains($0) }.map { "domain \($0)" }
        found += try await targets().filter { t in names.contains { t.iqn.hasSuffix("disk.\($0)") } }.map {
            "target \($0.iqn)"
        }
        for dir in ["disks", "saves"] {
            let path = "\(poolPath)/\(dir)/\(cluster)"
            if FileManager.default.fileExists(atPath: path) {
                found.append(
                    "pool \(dir)/\(cluster): \((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [])")
            }
        }
        if let bridge, try await bridgeExists(bridge) { found.append("bridge \(bridge)") }
        if let bridge {
            found += try await nftTables().filter { $0.hasSuffix(" peerless_\(bridge)") }.map { "nft table \($0)" }
        }
        if let bridge, FileManager.default.fileExists(atPath: "\(statePath)/net/\(bridge).pid") {
            found.append("dnsmasq of \(bridge)")
        }
        let secrets = try await sh("virsh", ["-c", "qemu:///system", "secret-list"]).stdout
        found += names.filter { secrets.contains(Naming.chapSecretUsage(vm: $0)) }.map { "libvirt secret of \($0)" }
        let accounts = try await tgtadm(["--op", "show", "--mode", "account"]).stdout
        found += names.filter { accounts.contains(Naming.chapUser(vm: $0)) }.map { "CHAP account of \($0)" }
        found += try await etcdKeys().filter {
            $0.contains("/clusters/\(cluster)") || $0.contains("/ops/\(cluster)") || $0.hasSuffix("/secrets/\(cluster)")
        }
        .map {
            "key \($0)"
        }
        if FileManager.default.fileExists(atPath: "\(statePath)/consoles/\(cluster)") {
            found.append("consoles of \(cluster)")
        }
        return found
    }

    func dumpLog() {
        print("---- vcd log of testbed \(id) ----\n\(tail(logPath, lines: 60))")
    }

    /// Removes everything: clusters (through vcd when it runs, by hand otherwise), vcd,
    /// tgtd, the pool mount, files and keys.
    func teardown() async {
        if vcd?.isRunning == true, let clusters = try? await vcJSON([ClusterSummary].self, ["cluster", "list"]) {
            for c in clusters { _ = try? await vc(["cluster", "destroy", c.name]) }
        }
        stopVCD()
        // Anything a crashed test left: domains of our clusters carry our node's initiator.
        for name in (try? await domainNames()) ?? [] {
            let xml = (try? await sh("virsh", ["-c", "qemu:///system", "dumpxml", name]).stdout) ?? ""
            if xml.contains(initiator) {
                _ = try? await sh("virsh", ["-c", "qemu:///system", "destroy", name])
                _ = try? await sh("virsh", ["-c", "qemu:///system", "undefine", name])
            }
        }
        for file in (try? FileManager.default.contentsOfDirectory(atPath: "\(statePath)/net")) ?? []
        where file.hasSuffix(".pid") {
            if let pid = Int32(
                ((try? String(contentsOfFile: "\(statePath)/net/\(file)", encoding: .utf8)) ?? "").trimmingCharacters(
                    in: .whitespacesAndNewlines))
            {
                kill(pid, SIGTERM)
            }
            let bridge = String(file.dropLast(4))
            _ = try? await sh("ip", ["link", "del", "dev", bridge])
        }
        // Tenant boundaries of this testbed's networks (their names carry its bridge prefix).
        for table in (try? await nftTables()) ?? [] where table.contains(" peerless_\(bridgePrefix)") {
            _ = try? await sh("nft", ["delete", "table"] + table.split(separator: " ").map(String.init))
        }
        // The disks' CHAP secrets a crashed test left in libvirt: their usage names carry the
        // VM's name, and every cluster name of a test carries the testbed's id.
        let secrets = (try? await sh("virsh", ["-c", "qemu:///system", "secret-list"]).stdout) ?? ""
        for line in secrets.split(whereSeparator: \.isNewline)
        where line.contains("peerless-disk-") && line.contains(id) {
            if let uuid = line.split(separator: " ").first {
                _ = try? await sh("virsh", ["-c", "qemu:///system", "secret-undefine", String(uuid)])
            }
        }
        try? await stopTGTD()
        _ = try? await sh("umount", [poolPath])
        _ = try? await sh("etcdctl", ["del", "--prefix", prefix])
        try? FileManager.default.removeItem(atPath: root)
    }
}

func tail(_ path: String, lines: Int = 20) -> String {
    let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
}

extension Testbed {
    func vcnodeStatus() async throws -> NodeStatus {
        let r = try await sh(
            "\(Build.binDirectory)/vcnode", ["status", "--endpoint", "unix://\(socket)", "--output", "json"])
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        guard let s = try? decoder.decode(NodeStatus.self, from: Data(r.stdout.utf8)) else {
            throw TestbedError.startFailed("vcnode status: \(r)")
        }
        return s
    }
}

extension Testbed {
    /// The cluster's record straight from etcd (works while vcd is down).
    func catalogCluster(_ name: String) async throws -> VirtualCluster? {
        let r = try await sh("etcdctl", ["get", "\(prefix)/clusters/\(name)", "--print-value-only"])
        let text = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !text.isEmpty else { return nil }
        struct Envelope: Decodable { var value: VirtualCluster }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try decoder.decode(Envelope.self, from: Data(text.utf8)).value
    }

    /// The CHAP passwords of a cluster's disks, straight from etcd.
    func catalogSecrets(_ name: String) async throws -> ClusterSecrets? {
        let r = try await sh("etcdctl", ["get", "\(prefix)/secrets/\(name)", "--print-value-only"])
        let text = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !text.isEmpty else { return nil }
        struct Envelope: Decodable { var value: ClusterSecrets }
        return try JSONDecoder().decode(Envelope.self, from: Data(text.utf8)).value
    }

    /// Runs vcd in the foreground with this testbed's configuration rewritten by `edit`,
    /// for start-up failures; returns how it ended.
    func runVCDExpectingFailure(_ edit: (String) -> String) async throws -> CommandResult {
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let path = "\(root)/failing.yaml"
        try edit(configuration(hooks: "", accelerator: "tcg")).write(toFile: path, atomically: true, encoding: .utf8)
        return try await sh("\(Build.binDirectory)/vcd", ["-c", path])
    }
}
