import Foundation
import Glibc
import Logging
import VCHost

/// The etcd member vcd runs on this node after `vcnode join` added it to the cluster. Like
/// a cluster network's dnsmasq it is a daemon of its own, not a child of vcd: the catalog
/// must not lose a voter because vcd restarts. vcd finds it again by its pid file, and
/// starts it again at its own start when it is not running (after a reboot).
struct EtcdMemberProcess: Sendable {
    /// What the member was added to the cluster as; kept beside its data directory.
    struct Definition: Codable, Sendable, Equatable {
        var name: String
        var peerURL: String
        var clientURL: String
        /// `--initial-cluster` as etcd's member list gave it at the addition; read by etcd
        /// only at the first start (afterwards the data directory says who the members are).
        var initialCluster: String
    }

    let directory: String
    let dataDirectory: String
    let configuration: DaemonConfiguration.EtcdMemberConfiguration
    let logger: Logger

    init(configuration: DaemonConfiguration, logger: Logger) {
        directory = "\(configuration.stateDirectory)/etcd-member"
        dataDirectory = configuration.etcd.member.dataDirectory ?? "\(directory)/data"
        self.configuration = configuration.etcd.member
        self.logger = logger
    }

    var definitionFile: String { "\(directory)/member.json" }
    var pidFile: String { "\(directory)/etcd.pid" }
    var logFile: String { "\(directory)/etcd.log" }

    /// The definition of the member this node was given, if any.
    func definition() -> Definition? {
        guard let data = FileManager.default.contents(atPath: definitionFile) else { return nil }
        return try? JSONDecoder().decode(Definition.self, from: data)
    }

    /// The pid of this node's member, if it runs.
    func runningPID() -> Int32? {
        guard let text = try? HostFiles.read(pidFile), let pid = Int32(text.trimmed) else { return nil }
        guard kill(pid, 0) == 0, !HostProcess.exited(pid),
            let cmdline = try? HostFiles.read("/proc/\(pid)/cmdline")
        else { return nil }
        // A recycled pid belongs to something else: only ours carries our data directory.
        return cmdline.contains(dataDirectory) ? pid : nil
    }

    /// Records `definition` and starts the member, unless it runs. Idempotent.
    func start(_ definition: Definition) async throws(DaemonError) {
        do {
            try HostFiles.makeDirectories(directory)
            chmod(directory, 0o700)
            try HostFiles.write(definitionFile, String(decoding: try JSONEncoder().encode(definition), as: UTF8.self))
        } catch {
            throw .failed("cannot write \(definitionFile): \(error)")
        }
        try await ensure()
    }

    /// Starts the recorded member when it does not run; nothing when none is recorded.
    func ensure() async throws(DaemonError) {
        guard let d = definition(), runningPID() == nil else { return }
        let arguments =
            [
                "--name", d.name, "--data-dir", dataDirectory,
                "--listen-client-urls", d.clientURL, "--advertise-client-urls", d.clientURL,
                "--listen-peer-urls", d.peerURL, "--initial-advertise-peer-urls", d.peerURL,
                "--initial-cluster", d.initialCluster, "--initial-cluster-state", "existing",
                "--heartbeat-interval", "\(configuration.heartbeatMilliseconds)",
                "--election-timeout", "\(configuration.electionMilliseconds)",
            ] + configuration.arguments
        // In a session of its own (setsid), its output in its log, its pid in the pid file:
        // the shell writes its own pid and becomes etcd.
        let script = "echo $$ > \"$1\"; shift; exec \"$@\" >> \"$LOG\" 2>&1 < /dev/null"
        do {
            try await HostCommand.run(
                "env",
                ["LOG=\(logFile)", "setsid", "-f", "sh", "-c", script, "sh", pidFile, configuration.program]
                    + arguments, timeout: .seconds(10), logger: logger)
        } catch {
            throw .failed("cannot start etcd: \(error.reason)")
        }
        for _ in 0..<50 {
            if runningPID() != nil {
                logger.notice("etcd member started", metadata: ["name": "\(d.name)", "peer": "\(d.peerURL)"])
                return
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
        let tail = (try? HostFiles.read(logFile))?.split(separator: "\n").suffix(2).joined(separator: " ") ?? ""
        throw .failed("etcd exited right after its start: \(tail.isEmpty ? "see \(logFile)" : tail)")
    }

    /// Stops the member and removes its files and data: a member removed from the cluster
    /// can never use its data directory again.
    func remove() async {
        if let pid = runningPID() {
            kill(pid, SIGTERM)
            for _ in 0..<100 where !HostProcess.exited(pid) { try? await Task.sleep(for: .milliseconds(50)) }
            if !HostProcess.exited(pid) { kill(pid, SIGKILL) }
        }
        try? FileManager.default.removeItem(atPath: dataDirectory)
        try? FileManager.default.removeItem(atPath: directory)
    }
}
