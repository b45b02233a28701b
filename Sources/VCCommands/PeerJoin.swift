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
    /// The id vcd made for this machine once (`STATE/machine-id`).
    static let machineIDPath = "/var/lib/peerless/machine-id"

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
        let token: String
        do {
            token = try String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        } catch {
            throw ValidationError("cannot read the API token file \(file): \(Self.reason(error))")
        }
        guard !token.isEmpty else { throw ValidationError("the API token file \(file) is empty") }
        let (url, host) = try Self.endpoint(peer)
        let peerClient = VCDClient(endpoint: url, token: token)
        let shared: JoinConfiguration = try await peerClient.get("/\(API.version)/join-configuration")
        let nodes: [NodeSummary] = try await peerClient.get("/\(API.version)/nodes")
        let name = name ?? Self.defaultName()
        do {
            try NameRule.checkNode(name)
        } catch {
            throw ValidationError("this node's name from its host name: \(error); give one with --name")
        }
        // A live registration of the name made by this very machine (its vcd restarted, its
        // machine id kept in the state directory) is this node's own.
        let machine = (try? String(contentsOfFile: Self.machineIDPath, encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines)
        if let holder = nodes.first(where: { $0.record.name == name && $0.state != .dead }),
            holder.record.machine == nil || holder.record.machine != machine
        {
            throw ValidationError(
                "node name \(name) is in use by the live node at \(holder.record.api); give this node another with --name, or 'vcnode replace \(name)' once it is dead"
            )
        }
        guard let underlay = underlay ?? Self.localAddress(reaching: host) else {
            throw ValidationError("cannot tell this node's address towards \(host); give it with --underlay ADDRESS")
        }
        // The configuration first, then the token: a token that cannot be put in place takes
        // the configuration away again, so that nothing is left of a failed run.
        try Self.publish(
            shared.vcdYAML(node: name, underlay: underlay, roles: [role], peer: peer), at: config, mode: 0o644)
        do {
            try Self.placeToken(token)
        } catch {
            unlink(config)
            throw error
        }
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

    /// The address this node reaches `host` (an IPv4 address or a name) from: a UDP socket
    /// connected to it, nothing sent. Nil when the name does not resolve or no route leads
    /// there.
    static func localAddress(reaching host: String) -> String? {
        var target = sockaddr_in()
        target.sin_family = sa_family_t(AF_INET)
        target.sin_port = in_port_t(UInt16(API.defaultPort).bigEndian)
        if inet_pton(AF_INET, host, &target.sin_addr) != 1 {
            var hints = addrinfo()
            hints.ai_family = AF_INET
            hints.ai_socktype = Int32(SOCK_DGRAM.rawValue)
            var found: UnsafeMutablePointer<addrinfo>?
            guard getaddrinfo(host, nil, &hints, &found) == 0, let first = found, let address = first.pointee.ai_addr
            else { return nil }
            defer { freeaddrinfo(found) }
            target.sin_addr = address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr }
        }
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
    static func placeToken(_ token: String) throws {
        if let present = try? String(contentsOfFile: tokenPath, encoding: .utf8) {
            guard present.trimmingCharacters(in: .whitespacesAndNewlines) == token else {
                throw ValidationError(
                    "\(tokenPath) holds another API token (of another cluster?); remove it first if this node is to leave that one"
                )
            }
            return
        }
        try publish(token + "\n", at: tokenPath, mode: 0o600)
    }

    /// Written whole, with `mode` from the start, or not at all; never over a file that is
    /// there (one made since the check at the start included): a temporary file, linked to
    /// `path`, which fails when `path` exists.
    static func publish(_ text: String, at path: String, mode: mode_t) throws {
        let temporary = "\(path).\(getpid()).tmp"
        defer { unlink(temporary) }
        do {
            try FileManager.default.createDirectory(
                atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        } catch {
            throw ValidationError("cannot write \(path): \(reason(error))")
        }
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL, mode)
        guard fd >= 0 else { throw ValidationError("cannot write \(path): \(String(cString: strerror(errno)))") }
        let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        do {
            try handle.write(contentsOf: Data(text.utf8))
            try handle.synchronize()
            try handle.close()
        } catch {
            throw ValidationError("cannot write \(path): \(reason(error))")
        }
        guard link(temporary, path) == 0 else {
            let why = errno == EEXIST ? "it exists" : String(cString: strerror(errno))
            throw ValidationError("cannot write \(path): \(why)")
        }
    }

    /// An error's cause as the system says it (errno's text when there is one).
    static func reason(_ error: any Error) -> String {
        let ns = error as NSError
        if let posix = ns.userInfo[NSUnderlyingErrorKey] as? NSError, posix.domain == NSPOSIXErrorDomain {
            return String(cString: strerror(Int32(posix.code)))
        }
        if ns.domain == NSPOSIXErrorDomain { return String(cString: strerror(Int32(ns.code))) }
        return ns.localizedDescription
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
