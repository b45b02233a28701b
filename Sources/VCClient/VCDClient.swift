// VCClient: talks to a vcd over its HTTP API, on TCP or on the local Unix socket. It
// knows the wire types and nothing about terminals.
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import VCModel

public enum ClientError: Error, Sendable, CustomStringConvertible {
    /// No vcd answered at the endpoint.
    case unreachable(endpoint: String, reason: String)
    /// vcd refused or failed the request.
    case api(APIError, status: Int)
    /// vcd answered something this client does not understand.
    case protocolError(String)
    /// The client has no way to prove it may drive vcd.
    case unauthorized(String)

    public var description: String {
        switch self {
        case .unreachable(let endpoint, let reason):
            return "no vcd answers at \(endpoint) (\(reason)); is vcd running? (make demo starts one)"
        case .api(let error, _): return error.message
        case .protocolError(let m): return "unexpected answer from vcd: \(m)"
        case .unauthorized(let m): return m
        }
    }

    /// The API's error code, or a client-side one.
    public var code: String {
        switch self {
        case .unreachable: return "unreachable"
        case .api(let e, _): return e.code
        case .protocolError: return "protocol"
        case .unauthorized: return "unauthorized"
        }
    }
}

/// A vcd endpoint: `http://HOST:PORT` or `unix:///path/to/vcd.sock`.
public struct VCDClient: Sendable {
    public let endpoint: String
    private let base: String
    private let http: HTTPClient
    /// The bearer token for a TCP endpoint (the local socket needs none).
    private let token: String?

    /// One client for the process, never shut down: a CLI exits when done. No read
    /// timeout, because an operation's stream may be quiet while a VM saves.
    public static let sharedHTTP = HTTPClient(
        eventLoopGroupProvider: .singleton,
        configuration: HTTPClient.Configuration(timeout: .init(connect: .seconds(5), read: nil)))

    public init(endpoint: String, token: String? = nil, http: HTTPClient = VCDClient.sharedHTTP) {
        self.endpoint = endpoint
        self.http = http
        self.token = token
        if endpoint.hasPrefix("unix://") {
            let path = String(endpoint.dropFirst("unix://".count))
            let encoded = path.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? path
            base = "http+unix://\(encoded)"
        } else {
            base = endpoint.hasSuffix("/") ? String(endpoint.dropLast()) : endpoint
        }
    }

    /// The token to send to `endpoint`: from `file` or `$VC_TOKEN_FILE` when given (an
    /// unreadable one is an error), else from vcd's default place when this user may read
    /// it, and then only to a loopback endpoint: this host's token is for this host's vcd.
    public static func token(for endpoint: String, file: String?) throws(ClientError) -> String? {
        guard !endpoint.hasPrefix("unix://") else { return nil }
        let env = ProcessInfo.processInfo.environment["VC_TOKEN_FILE"].flatMap { $0.isEmpty ? nil : $0 }
        if let path = file ?? env {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw .unauthorized("cannot read the API token file \(path); vcd keeps it in \(API.defaultTokenFile)")
            }
            return text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        guard isLoopback(endpoint),
            let text = try? String(contentsOfFile: API.defaultTokenFile, encoding: .utf8)
        else { return nil }
        return text.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Whether the endpoint is a vcd on this machine (its socket or loopback), which then
    /// sees the files this process sees.
    public var isLocal: Bool { endpoint.hasPrefix("unix://") || Self.isLoopback(endpoint) }

    public static func isLoopback(_ endpoint: String) -> Bool {
        guard let host = URL(string: endpoint)?.host?.lowercased() else { return false }
        return host == "localhost" || host == "::1" || host == "[::1]" || host.hasPrefix("127.")
    }

    private func authorize(_ request: inout HTTPClientRequest) {
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
    }

    /// The local socket if it exists, else loopback TCP.
    public static func defaultEndpoint() -> String {
        if let env = ProcessInfo.processInfo.environment["VC_ENDPOINT"], !env.isEmpty { return env }
        if FileManager.default.fileExists(atPath: API.defaultSocket) { return "unix://\(API.defaultSocket)" }
        return "http://127.0.0.1:\(API.defaultPort)"
    }

    public func get<T: Decodable>(_ path: String, as: T.Type = T.self) async throws(ClientError) -> T {
        try decode(try await send(.GET, path, body: nil).1)
    }

    public func delete<T: Decodable>(_ path: String, as: T.Type = T.self) async throws(ClientError) -> T {
        try decode(try await send(.DELETE, path, body: nil).1)
    }

    /// A request with a JSON body and a JSON answer (calls between nodes).
    public func post<T: Decodable>(_ path: String, body: some Encodable, as: T.Type = T.self, timeout: Duration)
        async throws(ClientError) -> T
    {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        guard let data = try? encoder.encode(body) else { throw .protocolError("request could not be encoded") }
        return try decode(try await send(.POST, path, body: Array(data), timeout: timeout).1)
    }

    /// Sends a file's bytes as a PUT body, read in chunks (memory images of suspended VMs).
    public func upload(_ path: String, from file: String, timeout: Duration) async throws(ClientError) {
        guard let handle = FileHandle(forReadingAtPath: file) else {
            throw .protocolError("cannot open \(file) to send it")
        }
        defer { try? handle.close() }
        let size = (try? FileManager.default.attributesOfItem(atPath: file)[.size] as? Int) ?? nil
        var request = HTTPClientRequest(url: base + path)
        request.method = .PUT
        authorize(&request)
        // One chunk per request for more: a memory image is never held whole in memory.
        let chunks = AsyncThrowingStream<ByteBuffer, any Error> {
            guard let data = try handle.read(upToCount: 1 << 20), !data.isEmpty else { return nil }
            return ByteBuffer(bytes: data)
        }
        request.body = .stream(chunks, length: size.map { .known(Int64($0)) } ?? .unknown)
        let response: HTTPClientResponse
        let bytes: [UInt8]
        do {
            response = try await http.execute(request, timeout: .init(timeout))
            bytes = Array(try await response.body.collect(upTo: 1 << 20).readableBytesView)
        } catch {
            throw .unreachable(endpoint: endpoint, reason: Self.reason(error))
        }
        guard response.status == .ok else { throw apiError(status: Int(response.status.code), bytes) }
    }

    /// Writes a GET's body to `file` as it arrives; false when the other side has no such file.
    public func download(_ path: String, to file: String, timeout: Duration) async throws(ClientError) -> Bool {
        var request = HTTPClientRequest(url: base + path)
        authorize(&request)
        do {
            let response = try await http.execute(request, timeout: .init(timeout))
            if response.status == .notFound { return false }
            guard response.status == .ok else {
                let bytes = Array(try await response.body.collect(upTo: 1 << 20).readableBytesView)
                throw apiError(status: Int(response.status.code), bytes)
            }
            _ = FileManager.default.createFile(atPath: file, contents: nil, attributes: [.posixPermissions: 0o600])
            guard let handle = FileHandle(forWritingAtPath: file) else {
                throw ClientError.protocolError("cannot write \(file)")
            }
            defer { try? handle.close() }
            for try await chunk in response.body { try handle.write(contentsOf: Data(chunk.readableBytesView)) }
            return true
        } catch let e as ClientError {
            throw e
        } catch {
            throw .unreachable(endpoint: endpoint, reason: Self.reason(error))
        }
    }

    /// Raw bytes and one response header (console reads).
    public func raw(_ path: String, header: String) async throws(ClientError) -> (bytes: [UInt8], header: String?) {
        let (response, bytes) = try await send(.GET, path, body: nil)
        return (bytes, response.headers.first(name: header))
    }

    /// Starts a long operation and feeds its events to `onEvent` until the final one,
    /// which it returns (a `.done` event) or throws (a `.failed` event).
    public enum Method: Sendable {
        case post, delete
        var nio: HTTPMethod { self == .post ? .POST : .DELETE }
    }

    @discardableResult
    public func operation(
        _ method: Method, _ path: String, body: (some Encodable)? = Optional<String>.none,
        onEvent: (OperationEvent) -> Void
    ) async throws(ClientError) -> OperationEvent {
        var request = HTTPClientRequest(url: base + path)
        request.method = method.nio
        authorize(&request)
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            guard let data = try? JSONEncoder().encode(body) else {
                throw .protocolError("request could not be encoded")
            }
            request.body = .bytes(ByteBuffer(bytes: data))
        }
        let response: HTTPClientResponse
        do {
            response = try await http.execute(request, timeout: .hours(24))
        } catch {
            throw .unreachable(endpoint: endpoint, reason: Self.reason(error))
        }
        guard response.status == .ok else {
            let bytes = (try? await response.body.collect(upTo: 1 << 20)).map { Array($0.readableBytesView) } ?? []
            throw apiError(status: Int(response.status.code), bytes)
        }
        var pending: [UInt8] = []
        var final: OperationEvent?
        do {
            for try await chunk in response.body {
                pending += chunk.readableBytesView
                while let newline = pending.firstIndex(of: 0x0A) {
                    let line = Array(pending[..<newline])
                    pending.removeSubrange(...newline)
                    guard !line.isEmpty else { continue }
                    let event: OperationEvent = try decode(line)
                    onEvent(event)
                    if event.kind == .done || event.kind == .failed { final = event }
                }
            }
        } catch let e as ClientError {
            throw e
        } catch {
            throw .unreachable(
                endpoint: endpoint,
                reason: "the connection broke during the operation: \(Self.reason(error)); it goes on in vcd")
        }
        guard let final else { throw .protocolError("the operation stream ended without a result") }
        if final.kind == .failed {
            throw .api(final.error ?? APIError(code: "failed", message: "the operation failed"), status: 200)
        }
        return final
    }

    private func send(_ method: HTTPMethod, _ path: String, body: [UInt8]?, timeout: Duration = .seconds(120))
        async throws(ClientError) -> (HTTPClientResponse, [UInt8])
    {
        var request = HTTPClientRequest(url: base + path)
        request.method = method
        authorize(&request)
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: body))
        }
        let response: HTTPClientResponse
        let bytes: [UInt8]
        do {
            response = try await http.execute(request, timeout: .init(timeout))
            bytes = Array(try await response.body.collect(upTo: 64 << 20).readableBytesView)
        } catch {
            throw .unreachable(endpoint: endpoint, reason: Self.reason(error))
        }
        guard response.status == .ok else { throw apiError(status: Int(response.status.code), bytes) }
        return (response, bytes)
    }

    private func apiError(status: Int, _ bytes: [UInt8]) -> ClientError {
        if let e = try? JSONDecoder().decode(APIError.self, from: Data(bytes)) { return .api(e, status: status) }
        // A proxy or the HTTP server itself may refuse a large body before vcd sees it.
        if status == 413 {
            return .api(APIError(code: "too-large", message: "the request is larger than vcd accepts"), status: status)
        }
        return .protocolError("HTTP \(status): \(String(decoding: bytes.prefix(200), as: UTF8.self))")
    }

    private func decode<T: Decodable>(_ bytes: [UInt8]) throws(ClientError) -> T {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        do {
            return try decoder.decode(T.self, from: Data(bytes))
        } catch {
            throw .protocolError("\(error)")
        }
    }

    private static func reason(_ error: any Error) -> String {
        let text = "\(error)"
        if text.lowercased().contains("refused") { return "connection refused" }
        if text.contains("ENOENT") || text.contains("No such file") { return "no such socket" }
        if text.contains("EACCES") || text.contains("Permission denied") {
            return "permission denied: the socket is for root and its group; use sudo, or TCP with the API token"
        }
        return text
    }
}
