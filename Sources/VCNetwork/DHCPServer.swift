import Glibc
import Logging
import VCHost
import VCModel

/// The dnsmasq of one cluster network. It runs as a daemon of its own (not a child of
/// vcd) so that DHCP and DNS keep answering while vcd restarts; vcd finds it again by its
/// pid file.
public struct DHCPServer: Sendable {
    public let table: DHCPTable
    private let logger: Logger

    public init(table: DHCPTable, logger: Logger) {
        self.table = table
        self.logger = logger
    }

    /// The pid of our dnsmasq for this network, if it runs.
    public func runningPID() -> Int32? {
        guard let text = try? HostFiles.read(table.pidFile), let pid = Int32(text.trimmed) else { return nil }
        guard kill(pid, 0) == 0, let cmdline = try? HostFiles.read("/proc/\(pid)/cmdline") else { return nil }
        // A recycled pid belongs to something else: only ours carries our config path.
        return cmdline.contains(table.configFile) ? pid : nil
    }

    /// Writes the configuration and starts dnsmasq, or restarts it if its configuration
    /// changed. Idempotent.
    public func ensure() async throws(NetworkError) {
        let config = table.configuration
        let current = try? HostFiles.read(table.configFile)
        if let pid = runningPID() {
            if current == config { return }
            await stop(pid: pid)
        }
        do {
            try HostFiles.makeDirectories(table.runDirectory)
            try HostFiles.write(table.configFile, config)
        } catch {
            throw .dhcpFailed(bridge: table.network.bridge, reason: "\(error)")
        }
        do {
            // dnsmasq forks into the background once it has bound its sockets.
            try await HostCommand.run(
                "dnsmasq", ["--conf-file=\(table.configFile)"], timeout: .seconds(20), logger: logger)
        } catch {
            throw .dhcpFailed(bridge: table.network.bridge, reason: error.reason)
        }
        guard runningPID() != nil else {
            throw .dhcpFailed(bridge: table.network.bridge, reason: "dnsmasq exited; see \(table.logFile)")
        }
    }

    /// Stops dnsmasq and removes its files. Idempotent.
    public func remove() async {
        if let pid = runningPID() { await stop(pid: pid) }
        for f in [table.configFile, table.pidFile, table.logFile] { unlink(f) }
    }

    private func stop(pid: Int32) async {
        kill(pid, SIGTERM)
        for _ in 0..<50 {
            if HostProcess.exited(pid) { return }
            try? await Task.sleep(for: .milliseconds(20))
        }
        kill(pid, SIGKILL)
    }
}
