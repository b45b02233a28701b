import ArgumentParser
import Foundation
import VCClient
import VCModel

/// `vcnode join --peer`: a node with no configuration yet gets vcd's from a node of the
/// cluster, with its own name, address and role, and the API token the technician brings
/// (`--token-file`, never on the command line). Then it waits for vcd on this node and
/// joins as `vcnode join` does.
struct PeerJoin {
    var peer: String
    var config: String
    var name: String?
    var underlay: String?
    var role: NodeRole
    var waitSeconds: Int
    var global: GlobalOptions

    /// Where vcd keeps its API token by default (`STATE/api-token`).
    static let tokenPath = API.defaultTokenFile

    func run() async throws {
        guard !FileManager.default.fileExists(atPath: config) else {
            throw ValidationError(
                "\(config) exists: this node is configured already; run 'vcnode join' without --peer, or remove \(config) first"
            )
        }
        let file =
            global.tokenFile ?? ProcessInfo.processInfo.environment["VC_TOKEN_FILE"].flatMap { $0.isEmpty ? nil : $0 }
        guard let file else {
            throw ValidationError(
                "--peer needs the cluster's API token: --token-file FILE, a copy of \(Self.tokenPath) from any node")
        }
        guard let token = try? String(contentsOfFile: file, encoding: .utf8), !token.isEmpty else {
            throw ValidationError("cannot read the API token file \(file)")
        }
        let (url, host) = try Self.endpoint(peer)
        let peerClient = VCDClient(endpoint: url, token: token.trimmingCharacters(in: .whitespacesAndNewlines))
        let shared: JoinConfiguration = try await peerClient.get("/\(API.version)/join-configuration")
        let nodes: [NodeSummary] = try await peerClient.get("/\(API.version)/nodes")
        let name = name ?? Self.defaultName()
        if let holder = nodes.first(where: { $0.record.name == name && $0.state != .dead }) {
            throw ValidationError(
                "node name \(name) is in use by the live node at \(holder.record.api); give this node another with --name, or 'vcnode replace \(name)' once it is dead"
            )
        }
        guard let underlay = underlay ?? Self.localAddress(reaching: host) else {
            throw ValidationError("cannot tell this node's address towards \(host); give it with --underlay ADDRESS")
        }
        try Self.writeToken(token)
        try Self.write(
            shared.vcdYAML(node: name, underlay: underlay, roles: [role], peer: peer), to: config, mode: 0o644)
        note(
            "wrote \(config): node \(name) (\(role.rawValue)) at \(underlay), etcd \(shared.etcdEndpoints.joined(separator: ", "))"
        )
        guard waitSeconds > 0 else {
            print("node \(name) is configured: start vcd on it (systemctl start vcd), then run 'vcnode join'")
            return
        }
        try await waitForLocalVCD()
        var local = global
        local.endpoint = global.endpoint ?? "unix://\(API.defaultSocket)"
        try await NodeSeat.take(replacing: nil, global: local)
    }

    /// The name vcd takes by default: from the host name (as vcd's `node` setting).
    static func defaultName() -> String {
        var buf = [CChar](repeating: 0, count: 256)
        gethostname(&buf, buf.count)
        return Naming.nodeName(
            host: String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }

    /// `HOST`, `HOST:PORT` or `http://HOST:PORT`: the peer's API URL and its host.
    static func endpoint(_ peer: String) throws -> (url: String, host: String) {
        let url = peer.contains("://") ? peer : "http://\(peer)"
        guard let parsed = URL(string: url), let host = parsed.host, !host.isEmpty, parsed.scheme == "http" else {
            throw ValidationError("--peer \(peer): give a node's API as HOST or HOST:PORT")
        }
        return (parsed.port == nil ? "http://\(host):\(API.defaultPort)" : url, host)
    }

    /// The address this node reaches `host` from (a UDP socket connected to it; nothing is
    /// sent). IPv4 only; nil when the kernel has no route.
    static func localAddress(reaching host: String) -> String? {
        var target = sockaddr_in()
        target.sin_family = sa_family_t(AF_INET)
        target.sin_port = in_port_t(UInt16(API.defaultPort).bigEndian)
        guard inet_pton(AF_INET, host, &target.sin_addr) == 1 else { return nil }
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        let connected = withUnsafePointer(to: &target) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else { return nil }
        var local = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { return nil }
        var text = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
        guard inet_ntop(AF_INET, &local.sin_addr, &text, socklen_t(text.count)) != nil else { return nil }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The token where vcd reads it, readable by root alone; one already there must be the
    /// same (another cluster's would be replaced silently otherwise).
    static func writeToken(_ token: String) throws {
        let trimmed = token.trimmingCharacters(in: .whitespacesAndNewlines)
        if let present = try? String(contentsOfFile: tokenPath, encoding: .utf8) {
            guard present.trimmingCharacters(in: .whitespacesAndNewlines) == trimmed else {
                throw ValidationError(
                    "\(tokenPath) holds another API token (of another cluster?); remove it first if this node is to leave that one"
                )
            }
            return
        }
        try write(trimmed + "\n", to: tokenPath, mode: 0o600)
    }

    /// Written whole or not at all: a temporary file of the mode asked, renamed.
    static func write(_ text: String, to path: String, mode: mode_t) throws {
        let directory = (path as NSString).deletingLastPathComponent
        let temporary = "\(path).\(getpid()).tmp"
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL, mode)
            guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
            let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
            try handle.write(contentsOf: Data(text.utf8))
            try handle.synchronize()
            try handle.close()
            guard rename(temporary, path) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        } catch {
            unlink(temporary)
            throw ValidationError("cannot write \(path): \(error.localizedDescription)")
        }
    }

    private func waitForLocalVCD() async throws {
        let local = VCDClient(endpoint: global.endpoint ?? "unix://\(API.defaultSocket)", token: nil)
        let deadline = ContinuousClock.now + .seconds(waitSeconds)
        note("waiting for vcd on this node (start it: systemctl start vcd)")
        while true {
            if (try? await local.get("/\(API.version)/node", as: NodeStatus.self)) != nil { return }
            guard ContinuousClock.now < deadline else {
                throw ValidationError(
                    "vcd on this node did not answer within \(waitSeconds) s; start it (systemctl start vcd), then run 'vcnode join'"
                )
            }
            try await Task.sleep(for: .milliseconds(500))
        }
    }

    private func note(_ line: String) {
        if global.output != .json { FileHandle.standardError.write(Data("\(line)\n".utf8)) }
    }
}
