// VCCatalog: the cluster's state in etcd, through etcd's JSON gateway. It owns the key
// layout and the compare-and-swap rules; it never touches the host.
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import VCModel

/// What can go wrong talking to the catalog.
public enum CatalogError: Error, Sendable, CustomStringConvertible {
    /// etcd did not answer at all.
    case unreachable(endpoint: String, reason: String)
    /// etcd answered with an error.
    case rejected(endpoint: String, status: Int, message: String)
    /// A value in the catalog could not be decoded.
    case corrupt(key: String, reason: String)
    /// A compare-and-swap lost: someone else changed the key first.
    case conflict(key: String)
    case alreadyExists(kind: String, name: String)
    case notFound(kind: String, name: String)
    /// An operation already holds the object.
    case busy(cluster: String, operation: ClusterOperation)

    public var description: String {
        switch self {
        case .unreachable(let endpoint, let reason):
            return
                "the catalog (etcd at \(endpoint)) is not reachable: \(reason); start etcd (scripts/daemons.sh start)"
        case .rejected(let endpoint, let status, let message):
            return "the catalog (etcd at \(endpoint)) refused the request (\(status)): \(message)"
        case .corrupt(let key, let reason): return "catalog key \(key) holds a value that cannot be read: \(reason)"
        case .conflict(let key): return "catalog key \(key) changed under us; retry"
        case .alreadyExists(let kind, let name): return "\(kind) '\(name)' already exists"
        case .notFound(let kind, let name): return "no \(kind) named '\(name)'"
        case .busy(let cluster, let op):
            return "cluster '\(cluster)' is busy: a \(op.kind.rawValue) started by node \(op.node) is in progress"
        }
    }
}

extension CatalogError {
    /// Whether the same request may succeed when sent again shortly: etcd is restarting or
    /// electing a leader, which takes seconds. What the gateway answers then, in etcd 3.4:
    /// `etcdserver/api/v3rpc/rpctypes/error.go` gives "etcdserver: no leader", "leader
    /// changed", "request timed out" (and its "possibly due to …" forms), "server stopped",
    /// "not capable" and "unhealthy cluster" gRPC code Unavailable, and "too many requests"
    /// ResourceExhausted; grpc-gateway v1.9.5 (`runtime/errors.go`, `HTTPStatusFromCode`)
    /// turns Unavailable into 503, DeadlineExceeded into 504 and ResourceExhausted into 429,
    /// with the gRPC message in the body. 429 alone is not enough: "mvcc: database space
    /// exceeded" is ResourceExhausted too, and only an operator ends it.
    public var isRetryable: Bool {
        switch self {
        case .unreachable: return true
        case .rejected(_, let status, let message):
            if status == 503 || status == 504 { return true }
            let text = message.lowercased()
            return Self.transientMessages.contains { text.contains($0) }
        case .corrupt, .conflict, .alreadyExists, .notFound, .busy: return false
        }
    }

    /// Matched in the message too: a proxy in front of etcd may change the status.
    static let transientMessages = [
        "etcdserver: no leader", "etcdserver: leader changed", "etcdserver: request timed out",
        "etcdserver: too many requests", "etcdserver: server stopped", "etcdserver: unhealthy cluster",
    ]
}

/// One key as etcd returns it.
public struct KeyValue: Sendable, Equatable {
    public var key: String
    public var value: [UInt8]
    public var createRevision: Int64
    public var modRevision: Int64
    public var lease: Int64
}

/// A condition of a transaction.
public enum Compare: Sendable {
    /// The key does not exist.
    case absent(String)
    /// The key exists and was last changed at this revision.
    case modRevision(String, equals: Int64)
    /// The key exists and holds exactly this value.
    case value(String, equals: [UInt8])
}

/// A request inside a transaction.
public enum TxnOp: Sendable {
    case put(String, [UInt8], lease: Int64? = nil)
    case delete(String)
}

/// A small client for etcd's v3 JSON gateway (`/v3/kv/range`, `/v3/kv/txn`, leases).
/// gRPC would need a protobuf toolchain; the gateway is part of etcd and stable in 3.4.
public struct EtcdClient: Sendable {
    public let endpoint: String
    public var timeout: TimeAmount
    private let http: HTTPClient

    public init(endpoint: String, http: HTTPClient = .shared, timeout: TimeAmount = .seconds(5)) {
        self.endpoint = endpoint.hasSuffix("/") ? String(endpoint.dropLast()) : endpoint
        self.http = http
        self.timeout = timeout
    }

    public func get(_ key: String) async throws(CatalogError) -> KeyValue? {
        let r: RangeResponse = try await call("/v3/kv/range", ["key": b64(key)])
        guard let first = r.kvs?.first else { return nil }
        return try first.decoded()
    }

    /// Every key under `prefix`, sorted by key.
    public func list(prefix: String) async throws(CatalogError) -> [KeyValue] {
        let r: RangeResponse = try await call(
            "/v3/kv/range", ["key": b64(prefix), "range_end": b64(Self.prefixEnd(prefix))])
        var out: [KeyValue] = []
        for kv in r.kvs ?? [] { out.append(try kv.decoded()) }
        return out
    }

    public func put(_ key: String, _ value: [UInt8], lease: Int64? = nil) async throws(CatalogError) {
        var body: [String: Any] = ["key": b64(key), "value": Data(value).base64EncodedString()]
        if let lease { body["lease"] = String(lease) }
        let _: Header = try await call("/v3/kv/put", body)
    }

    public func delete(_ key: String) async throws(CatalogError) {
        let _: Header = try await call("/v3/kv/deleterange", ["key": b64(key)])
    }

    /// Runs `success` if every comparison holds, else `failure`. Returns whether it held.
    @discardableResult
    public func txn(_ compares: [Compare], success: [TxnOp], failure: [TxnOp] = []) async throws(CatalogError) -> Bool {
        let body: [String: Any] = [
            "compare": compares.map(encode), "success": success.map(encode), "failure": failure.map(encode),
        ]
        let r: TxnResponse = try await call("/v3/kv/txn", body)
        return r.succeeded ?? false
    }

    /// Grants a lease; etcd may round the TTL up to its minimum.
    public func grantLease(ttlSeconds: Int) async throws(CatalogError) -> (id: Int64, ttl: Int) {
        let r: LeaseGrant = try await call("/v3/lease/grant", ["TTL": String(ttlSeconds), "ID": "0"])
        guard let id = r.id.flatMap(Int64.init), let ttl = r.ttl.flatMap(Int.init) else {
            throw .rejected(endpoint: endpoint, status: 200, message: r.error ?? "lease grant without an ID")
        }
        return (id, ttl)
    }

    /// Renews a lease once; returns the remaining TTL, 0 when the lease is gone.
    public func keepAlive(lease: Int64) async throws(CatalogError) -> Int {
        let r: KeepAliveResponse = try await call("/v3/lease/keepalive", ["ID": String(lease)])
        return r.result?.ttl.flatMap(Int.init) ?? 0
    }

    public func revoke(lease: Int64) async throws(CatalogError) {
        let _: Header = try await call("/v3/lease/revoke", ["ID": String(lease)])
    }

    // MARK: - wire

    private func encode(_ c: Compare) -> [String: Any] {
        switch c {
        case .absent(let key):
            return ["key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"]
        case .modRevision(let key, let rev):
            return ["key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": String(rev)]
        case .value(let key, let v):
            return ["key": b64(key), "target": "VALUE", "result": "EQUAL", "value": Data(v).base64EncodedString()]
        }
    }

    private func encode(_ op: TxnOp) -> [String: Any] {
        switch op {
        case .put(let key, let value, let lease):
            var put: [String: Any] = ["key": b64(key), "value": Data(value).base64EncodedString()]
            if let lease { put["lease"] = String(lease) }
            return ["request_put": put]
        case .delete(let key):
            return ["request_delete_range": ["key": b64(key)]]
        }
    }

    private func b64(_ s: String) -> String { Data(s.utf8).base64EncodedString() }

    /// The range end that selects every key starting with `prefix`.
    static func prefixEnd(_ prefix: String) -> String {
        var bytes = Array(prefix.utf8)
        while let last = bytes.last {
            if last < 0xff {
                bytes[bytes.count - 1] = last + 1
                return String(decoding: bytes, as: UTF8.self)
            }
            bytes.removeLast()
        }
        return "\0"
    }

    private func call<R: Decodable>(_ path: String, _ body: [String: Any]) async throws(CatalogError) -> R {
        let data: Data
        do {
            data = try JSONSerialization.data(withJSONObject: body)
        } catch {
            throw .rejected(endpoint: endpoint, status: 0, message: "request could not be encoded: \(error)")
        }
        var request = HTTPClientRequest(url: endpoint + path)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(bytes: data))
        let status: Int
        let bytes: ByteBuffer
        do {
            let response = try await http.execute(request, timeout: timeout)
            status = Int(response.status.code)
            bytes = try await response.body.collect(upTo: 64 << 20)
        } catch {
            throw .unreachable(endpoint: endpoint, reason: Self.reason(error))
        }
        let raw = Data(bytes.readableBytesView)
        guard status == 200 else {
            let message =
                (try? JSONDecoder().decode(GatewayError.self, from: raw))?.message
                ?? String(decoding: raw, as: UTF8.self)
            throw .rejected(endpoint: endpoint, status: status, message: message)
        }
        do {
            return try JSONDecoder().decode(R.self, from: raw)
        } catch {
            throw .rejected(endpoint: endpoint, status: status, message: "unexpected answer to \(path): \(error)")
        }
    }

    private static func reason(_ error: any Error) -> String {
        let text = "\(error)"
        if text.contains("connectTimeout") || text.contains("deadlineExceeded") { return "timed out" }
        if text.lowercased().contains("refused") { return "connection refused" }
        return text
    }
}

// grpc-gateway renders int64 as strings and leaves out zero values.
private struct Header: Decodable {}
private struct GatewayError: Decodable {
    var error: String?
    var message: String?
}
private struct RangeResponse: Decodable { var kvs: [WireKV]? }
private struct TxnResponse: Decodable { var succeeded: Bool? }
private struct LeaseGrant: Decodable {
    var id: String?
    var ttl: String?
    var error: String?
    enum CodingKeys: String, CodingKey {
        case id = "ID"
        case ttl = "TTL"
        case error
    }
}
private struct KeepAliveResponse: Decodable {
    struct Result: Decodable {
        var ttl: String?
        enum CodingKeys: String, CodingKey { case ttl = "TTL" }
    }
    var result: Result?
}
private struct WireKV: Decodable {
    var key: String
    var value: String?
    var createRevision: String?
    var modRevision: String?
    var lease: String?

    enum CodingKeys: String, CodingKey {
        case key, value, lease
        case createRevision = "create_revision"
        case modRevision = "mod_revision"
    }

    func decoded() throws(CatalogError) -> KeyValue {
        guard let k = Data(base64Encoded: key) else { throw .corrupt(key: key, reason: "key is not base64") }
        let name = String(decoding: k, as: UTF8.self)
        guard let v = Data(base64Encoded: value ?? "") else { throw .corrupt(key: name, reason: "value is not base64") }
        return KeyValue(
            key: name, value: Array(v), createRevision: createRevision.flatMap(Int64.init) ?? 0,
            modRevision: modRevision.flatMap(Int64.init) ?? 0, lease: lease.flatMap(Int64.init) ?? 0)
    }
}
