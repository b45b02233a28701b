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
        guard let text = try? Self.read(table.pidFile), let pid = Int32(text.trimmingCharacters()) else { return nil }
        guard kill(pid, 0) == 0, let cmdline = try? Self.read("/proc/\(pid)/cmdline") else { return nil }
        // A recycled pid belongs to something else: only ours carries our config path.
        return cmdline.contains(table.configFile) ? pid : nil
    }

    /// Writes the configuration and starts dnsmasq, or restarts it if its configuration
    /// changed. Idempotent.
    public func ensure() async throws(NetworkError) {
        let config = table.configuration
        let current = try? Self.read(table.configFile)
        if let pid = runningPID() {
            if current == config { return }
            await stop(pid: pid)
        }
        do {
            try Self.makeDirectory(table.runDirectory)
            try Self.write(table.configFile, config)
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
            if kill(pid, 0) != 0 { return }
            try? await Task.sleep(for: .milliseconds(20))
        }
        kill(pid, SIGKILL)
    }

    struct FileError: Error, CustomStringConvertible {
        var path: String
        var reason: String
        var description: String { "\(path): \(reason)" }
    }

    static func read(_ path: String) throws -> String {
        guard let f = fopen(path, "r") else { throw FileError(path: path, reason: String(cString: strerror(errno))) }
        defer { fclose(f) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&buf, 1, buf.count, f)
            if n == 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func write(_ path: String, _ text: String) throws {
        let tmp = path + ".new"
        guard let f = fopen(tmp, "w") else { throw FileError(path: tmp, reason: String(cString: strerror(errno))) }
        let bytes = Array(text.utf8)
        let ok = fwrite(bytes, 1, bytes.count, f) == bytes.count
        fclose(f)
        guard ok, rename(tmp, path) == 0 else { throw FileError(path: path, reason: String(cString: strerror(errno))) }
    }

    static func makeDirectory(_ p: String) throws {
        var partial = ""
        for component in p.split(separator: "/") {
            partial += "/" + component
            if mkdir(partial, 0o755) != 0 && errno != EEXIST {
                throw FileError(path: partial, reason: String(cString: strerror(errno)))
            }
        }
    }
}

extension String {
    fileprivate func trimmingCharacters() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return String(s)
    }
}
