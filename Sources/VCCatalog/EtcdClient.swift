// VCCatalog: the cluster's state in etcd, through etcd's JSON gateway. It owns the key
// layout and the compare-and-swap rules; it never touches the host.
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import Synchronization
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
    /// None of several etcd members served the request: `answered` of the `of` members
    /// could be reached, and `reasons` says what each one did, in the order tried.
    case noQuorum(answered: Int, of: Int, reasons: String)
    /// The node was taken out of the cluster (`vcnode remove`) and may not register again.
    case removed(node: String)
    /// The node that would run an operation holds no registration (no lease) now.
    case unregistered(node: String)
    /// Another machine's vcd holds the node's name now (a registration under a live lease
    /// that this machine did not make).
    case nameInUse(node: String, api: String)

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
        case .noQuorum(let answered, let of, let reasons) where answered * 2 > of:
            // A majority is up, so the cluster can serve again by itself once it has a leader.
            return
                "the catalog has no quorum at the moment: \(answered) of \(of) etcd members can be reached but none served the request (\(reasons)); they may be electing a leader: retry shortly"
        case .noQuorum(let answered, let of, let reasons):
            return
                "the catalog has no quorum: \(answered) of \(of) etcd members can be reached (\(reasons)); running VMs keep running; start the members again"
        case .removed(let node):
            return
                "node \(node) was removed from the cluster (vcnode remove) and does not register again under that name; stop its vcd, or give the machine a new name"
        case .nameInUse(let node, let api):
            return
                "node name \(node) is in use by another machine whose vcd is alive (\(api)); give this machine another name (node: in vcd.yaml), or run 'vcnode replace \(node)' on it under a new name once \(node) is dead or drained"
        case .unregistered(let node):
            return
                "node \(node) holds no lease in the catalog now (starting, cut off from etcd, or removed), so it starts nothing; retry shortly or ask another node"
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
        case .unreachable, .noQuorum: return true
        case .rejected(_, let status, let message):
            if status == 503 || status == 504 { return true }
            let text = message.lowercased()
            return Self.transientMessages.contains { text.contains($0) }
        case .corrupt, .conflict, .alreadyExists, .notFound, .busy, .removed, .unregistered, .nameInUse: return false
        }
    }

    /// Matched in the message too: a proxy in front of etcd may change the status.
    static let transientMessages = [
        "etcdserver: no leader", "etcdserver: leader changed", "etcdserver: request timed out",
        "etcdserver: too many requests", "etcdserver: server stopped", "etcdserver: unhealthy cluster",
        // A member shutting down (one just removed from the cluster answers so, 500, for a
        // moment): another member serves the request.
        "raft: stopped",
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

/// Every key under a prefix, read at one revision.
public struct PrefixSnapshot: Sendable, Equatable {
    /// Sorted by key.
    public var kvs: [KeyValue]
    /// etcd's revision when it read them: every change up to it is in `kvs`.
    public var revision: Int64

    public init(kvs: [KeyValue], revision: Int64) {
        self.kvs = kvs
        self.revision = revision
    }
}

/// A linearizable look at a prefix without its values (``EtcdClient/probe(prefix:changedAfter:)``).
public struct PrefixProbe: Sendable, Equatable {
    /// etcd's revision when it answered.
    public var revision: Int64
    /// How many keys the prefix holds.
    public var count: Int
    /// The highest revision at which a key that still exists under the prefix was last
    /// changed, of those changed after the revision asked about; 0 when none was.
    public var latestChange: Int64

    public init(revision: Int64, count: Int, latestChange: Int64) {
        self.revision = revision
        self.count = count
        self.latestChange = latestChange
    }
}

/// A condition of a transaction.
public enum Compare: Sendable {
    /// The key does not exist.
    case absent(String)
    /// The key exists.
    case present(String)
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
///
/// Given several members, a request goes to the preferred one first and, when that one
/// cannot be reached or says it cannot serve now (`CatalogError.isRetryable`), to each
/// other member at most once; the member that answers becomes the preferred one for every
/// copy of the client. ``EndpointFailover`` decides the order and the time each may take.
///
/// Sending a write again to another member after the first one took it and went silent may
/// apply it twice. That is accepted for what this client sends: a put of the same value and
/// a delete leave the same state (with one more revision), and a guarded transaction's
/// compare fails the second time, so it reports `false` although the first one landed
/// (callers that retry writes recognise their own earlier attempt, see `RetryPolicy`). A
/// lease grant whose reply was lost is not sent again; one that a member refused with a
/// retryable error is, and as etcd's "request timed out" may still commit later, that can
/// leave a second lease that nothing uses: it expires after its TTL, harmless.
public struct EtcdClient: Sendable {
    /// Every member, in the order given, until `follow(members:)` learns them from etcd.
    public var endpoints: [String] { preferred.state.endpoints }
    /// The whole time a request may take, over every member it is sent to.
    public var timeout: TimeAmount
    private let http: HTTPClient
    private let preferred: PreferredMember

    /// The HTTP client used unless one is given: a member that is down must cost about a
    /// second, so connections time out after 1 s and a refused one is not tried again
    /// (AsyncHTTPClient's default retries until the connect timeout, 90 s for `.shared`).
    /// It lives as long as the process and is never shut down.
    public static let failoverHTTPClient = HTTPClient(
        eventLoopGroup: HTTPClient.defaultEventLoopGroup,
        configuration: {
            var configuration = HTTPClient.Configuration(timeout: .init(connect: .seconds(1)))
            configuration.connectionPool.retryConnectionEstablishment = false
            return configuration
        }())

    /// A client for the members at `endpoints` (at least one), tried in the given order at
    /// first.
    public init(endpoints: [String], http: HTTPClient = failoverHTTPClient, timeout: TimeAmount = .seconds(5)) {
        precondition(!endpoints.isEmpty, "an etcd client needs at least one endpoint")
        self.http = http
        self.timeout = timeout
        self.preferred = PreferredMember(endpoints.map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 })
    }

    /// A client for one member.
    public init(endpoint: String, http: HTTPClient = failoverHTTPClient, timeout: TimeAmount = .seconds(5)) {
        self.init(endpoints: [endpoint], http: http, timeout: timeout)
    }

    /// The member the next request goes to first: the one that answered last.
    public var endpoint: String { preferred.state.endpoint }

    /// - Parameter deadline: the request ends by then at the latest (else by the client's
    ///   timeout), and the members to try share the time left.
    public func get(_ key: String, by deadline: ContinuousClock.Instant? = nil) async throws(CatalogError)
        -> KeyValue?
    {
        let r: RangeResponse = try await call("/v3/kv/range", ["key": b64(key)], by: deadline)
        guard let first = r.kvs?.first else { return nil }
        return try first.decoded()
    }

    /// Every key under `prefix`, sorted by key.
    public func list(prefix: String, by deadline: ContinuousClock.Instant? = nil) async throws(CatalogError)
        -> [KeyValue]
    {
        try await snapshot(prefix: prefix, by: deadline).kvs
    }

    /// Every key under `prefix` with the revision they were read at: where a watch of the
    /// prefix takes over (from `revision + 1`).
    public func snapshot(prefix: String, by deadline: ContinuousClock.Instant? = nil) async throws(CatalogError)
        -> PrefixSnapshot
    {
        let r: RangeResponse = try await call(
            "/v3/kv/range", ["key": b64(prefix), "range_end": b64(Self.prefixEnd(prefix))], by: deadline)
        var out: [KeyValue] = []
        out.reserveCapacity(r.kvs?.count ?? 0)
        for kv in r.kvs ?? [] { out.append(try kv.decoded()) }
        return PrefixSnapshot(kvs: out, revision: r.header?.revision.flatMap(Int64.init) ?? 0)
    }

    /// etcd's revision now, the number of keys under `prefix` and the latest change of
    /// those changed after `revision`, by one linearizable range without values: whether
    /// a mirror that applied every change up to `revision` still holds what etcd does.
    /// etcd reads the prefix's keys to filter them (`min_mod_revision` sorts out after
    /// reading), but answers only those changed, keys only, and the count.
    public func probe(prefix: String, changedAfter revision: Int64) async throws(CatalogError) -> PrefixProbe {
        let r: RangeResponse = try await call(
            "/v3/kv/range",
            [
                "key": b64(prefix), "range_end": b64(Self.prefixEnd(prefix)), "keys_only": true,
                "min_mod_revision": String(revision + 1),
            ])
        let latest = (r.kvs ?? []).compactMap { $0.modRevision.flatMap(Int64.init) }.max() ?? 0
        return PrefixProbe(
            revision: r.header?.revision.flatMap(Int64.init) ?? 0, count: r.count.flatMap(Int.init) ?? 0,
            latestChange: latest)
    }

    /// Watches every key under `prefix` from revision `start` on (`POST /v3/watch`, the
    /// gateway's stream of one JSON object a line) and hands each message to `receive`
    /// in order, until `receive` returns false or etcd ends the watch (`.compacted`,
    /// `.canceled`, handed on first); the stream is then closed. Opening it fails over
    /// between members as every request does; a stream that breaks or ends otherwise, or
    /// that the task's cancellation stops, throws: the caller lists again and watches
    /// from that list's revision.
    public func watch(
        prefix: String, from start: Int64, _ receive: (WatchMessage) async -> Bool
    ) async throws(CatalogError) {
        let create: [String: Any] = [
            "key": b64(prefix), "range_end": b64(Self.prefixEnd(prefix)), "start_revision": String(start),
            "prev_kv": false,
        ]
        let data: Data
        do {
            data = try JSONSerialization.data(withJSONObject: ["create_request": create])
        } catch {
            throw .rejected(endpoint: endpoint, status: 0, message: "watch request could not be encoded: \(error)")
        }
        let members = preferred.state
        var round = EndpointFailover(
            endpoints: members.endpoints, preferred: members.preferred, deadline: .now + Duration(timeout),
            resendingLostReplies: true)
        while let attempt = round.next(now: .now) {
            if Task.isCancelled { throw .unreachable(endpoint: endpoint, reason: "the watch was cancelled") }
            let endpoint = members.endpoints[attempt.member]
            var request = HTTPClientRequest(url: endpoint + "/v3/watch")
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: data))
            let response: HTTPClientResponse
            do {
                // The timeout ends at the response head; the stream itself is open-ended.
                response = try await http.execute(request, timeout: TimeAmount(attempt.timeout))
            } catch {
                round.failed(EndpointFailover.outcome(of: error, budget: attempt.timeout))
                continue
            }
            if response.status.code != 200 {
                let raw = (try? await response.body.collect(upTo: 1 << 20)).map { Data($0.readableBytesView) } ?? Data()
                let message =
                    (try? JSONDecoder().decode(GatewayError.self, from: raw))?.message
                    ?? String(decoding: raw, as: UTF8.self)
                let error = CatalogError.rejected(
                    endpoint: endpoint, status: Int(response.status.code), message: message)
                if error.isRetryable {
                    round.failed(.refused(status: Int(response.status.code), message: message))
                    continue
                }
                throw error
            }
            preferred.prefer(members.endpoints[attempt.member])
            try await stream(response.body, from: endpoint, to: receive)
            return
        }
        throw round.error
    }

    /// Reads a watch's stream to its end or until `receive` or etcd ends the watch.
    private func stream(
        _ body: HTTPClientResponse.Body, from endpoint: String, to receive: (WatchMessage) async -> Bool
    ) async throws(CatalogError) {
        // A single message holds whole revisions: a transaction of many large values is
        // one line.
        var lines = LineSplitter(limit: 64 << 20)
        do {
            for try await chunk in body {
                for line in try lines.append(chunk.readableBytesView) {
                    guard let message = try WatchMessage.decode(line: line, endpoint: endpoint) else { continue }
                    guard await receive(message) else { return }
                    switch message {
                    case .compacted, .canceled: return
                    case .created, .changes: break
                    }
                }
            }
        } catch let error as CatalogError {
            throw error
        } catch {
            if Task.isCancelled { throw .unreachable(endpoint: endpoint, reason: "the watch was cancelled") }
            throw .unreachable(endpoint: endpoint, reason: "the watch stream broke: \(error)")
        }
        if Task.isCancelled { throw .unreachable(endpoint: endpoint, reason: "the watch was cancelled") }
        throw .unreachable(endpoint: endpoint, reason: "etcd ended the watch stream")
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
        let r: LeaseGrant = try await call(
            "/v3/lease/grant", ["TTL": String(ttlSeconds), "ID": "0"], resendingLostReplies: false)
        guard let id = r.id.flatMap(Int64.init), let ttl = r.ttl.flatMap(Int.init) else {
            throw .rejected(endpoint: endpoint, status: 200, message: r.error ?? "lease grant without an ID")
        }
        return (id, ttl)
    }

    /// Renews a lease once; returns the remaining TTL, 0 when the lease is gone (etcd
    /// leaves the TTL out then). An error etcd puts in the stream instead of a result is
    /// thrown, never taken for a lease that is gone.
    ///
    /// - Parameter deadline: as for ``get(_:by:)``: a renewal bounded by the lease's own
    ///   deadline must reach a live member within it, not spend it all waiting on a dead one.
    public func keepAlive(lease: Int64, by deadline: ContinuousClock.Instant? = nil) async throws(CatalogError)
        -> Int
    {
        let r: KeepAliveResponse = try await call("/v3/lease/keepalive", ["ID": String(lease)], by: deadline)
        guard let result = r.result else {
            throw .rejected(
                endpoint: endpoint, status: 200, message: r.error?.message ?? "lease keep-alive without a result")
        }
        return result.ttl.flatMap(Int.init) ?? 0
    }

    /// How long a lease has left as etcd's leader counts it, in seconds rounded up; -1
    /// when it is gone (expired and revoked, or never existed); nil when the answer says
    /// neither (the gateway leaves a zero out, so an answer without a TTL cannot be told
    /// from one that lacks it for another reason). Any client may ask about any lease.
    public func timeToLive(lease: Int64, by deadline: ContinuousClock.Instant? = nil) async throws(CatalogError)
        -> Int?
    {
        let r: LeaseTimeToLive = try await call("/v3/lease/timetolive", ["ID": String(lease)], by: deadline)
        return r.ttl.flatMap(Int.init)
    }

    public func revoke(lease: Int64, by deadline: ContinuousClock.Instant? = nil) async throws(CatalogError) {
        let _: Header = try await call("/v3/lease/revoke", ["ID": String(lease)], by: deadline)
    }

    // MARK: - membership

    /// One member of the etcd cluster as its member list gives it.
    public struct Member: Sendable, Equatable {
        public var id: UInt64
        /// Empty for a member added but not started yet.
        public var name: String
        public var clientURLs: [String]
        public var peerURLs: [String]
        public var isLearner: Bool
        /// The hosts of its client and peer URLs: a node whose underlay address is one of
        /// them runs it.
        public var hosts: Set<String> { Set((clientURLs + peerURLs).compactMap { URL(string: $0)?.host }) }
    }

    /// Every member, voting or learner (`/v3/cluster/member/list`).
    public func members() async throws(CatalogError) -> [Member] {
        let r: MemberListResponse = try await call("/v3/cluster/member/list", [:])
        return (r.members ?? []).compactMap(\.member)
    }

    /// Talks to the voting members etcd lists from now on (the members a join added
    /// included, the ones a removal took out not), as etcd's own clients sync their
    /// endpoints. Only when the member that answered is among them: then the URLs the
    /// members advertise are the ones this client reaches them at (a single member
    /// advertising `localhost` keeps the configured URL). Learners are left out: they
    /// serve no write and no linearizable read. True when the list changed.
    @discardableResult
    public func follow(members: [Member]) -> Bool {
        let urls = members.filter { !$0.isLearner && !$0.name.isEmpty }.flatMap(\.clientURLs)
            .map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 }
        guard urls.contains(endpoint), Set(urls) != Set(endpoints) else { return false }
        preferred.replace(urls.sorted())
        return true
    }

    /// Removes a member (`/v3/cluster/member/remove`). etcd refuses it, with its own
    /// message, when the members left would not have a quorum of started ones.
    /// A member that is gone already (an earlier attempt whose reply was lost) is done.
    public func removeMember(_ id: UInt64) async throws(CatalogError) {
        do {
            let _: Header = try await call("/v3/cluster/member/remove", ["ID": String(id)])
        } catch .rejected(_, _, let message) where message.contains("member not found") {
            return
        }
    }

    /// Adds a member at `peerURLs` (`/v3/cluster/member/add`), a learner unless told
    /// otherwise; gives it and every member as etcd lists them after the addition. Not sent
    /// again after a lost reply (a second addition would be refused, or add it twice): the
    /// caller lists the members to find out.
    public func addMember(peerURLs: [String], learner: Bool = true) async throws(CatalogError) -> (
        added: Member, members: [Member]
    ) {
        let r: MemberAddResponse = try await call(
            "/v3/cluster/member/add", ["peerURLs": peerURLs, "isLearner": learner], resendingLostReplies: false)
        let members = (r.members ?? []).compactMap(\.member)
        guard let added = r.member?.member else {
            throw .rejected(endpoint: endpoint, status: 200, message: "member add answered without the member")
        }
        return (added, members)
    }

    /// Makes a learner a voting member (`/v3/cluster/member/promote`). etcd refuses it, in
    /// its own words, until the learner's log has caught up with the leader's.
    public func promoteMember(_ id: UInt64) async throws(CatalogError) {
        let _: Header = try await call("/v3/cluster/member/promote", ["ID": String(id)])
    }

    /// Whether the member this client talks to answers a status request within the
    /// client's timeout (`/v3/maintenance/status`); for a client of one member.
    public func answersStatus() async -> Bool {
        do {
            let _: Header = try await call("/v3/maintenance/status", [:])
            return true
        } catch {
            return false
        }
    }

    // MARK: - wire

    private func encode(_ c: Compare) -> [String: Any] {
        switch c {
        case .absent(let key):
            return ["key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"]
        case .present(let key):
            return ["key": b64(key), "target": "CREATE", "result": "GREATER", "create_revision": "0"]
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

    private func call<R: Decodable>(
        _ path: String, _ body: [String: Any], resendingLostReplies: Bool = true,
        by deadline: ContinuousClock.Instant? = nil
    ) async throws(CatalogError) -> R {
        let data: Data
        do {
            data = try JSONSerialization.data(withJSONObject: body)
        } catch {
            throw .rejected(endpoint: endpoint, status: 0, message: "request could not be encoded: \(error)")
        }
        let members = preferred.state
        let own = ContinuousClock.now + Duration(timeout)
        var round = EndpointFailover(
            endpoints: members.endpoints, preferred: members.preferred, deadline: min(own, deadline ?? own),
            resendingLostReplies: resendingLostReplies)
        while let attempt = round.next(now: .now) {
            if Task.isCancelled { throw .unreachable(endpoint: endpoint, reason: "the request was cancelled") }
            let endpoint = members.endpoints[attempt.member]
            let status: Int
            let raw: Data
            switch await send(path, data, to: endpoint, within: attempt.timeout) {
            case .failed(let outcome):
                round.failed(outcome)
                continue
            case .answered(let s, let r): (status, raw) = (s, r)
            }
            if status != 200 {
                let message =
                    (try? JSONDecoder().decode(GatewayError.self, from: raw))?.message
                    ?? String(decoding: raw, as: UTF8.self)
                let error = CatalogError.rejected(endpoint: endpoint, status: status, message: message)
                if error.isRetryable {
                    round.failed(.refused(status: status, message: message))
                    continue
                }
                preferred.prefer(members.endpoints[attempt.member])
                throw error
            }
            // A streaming call (the keep-alive) gets etcd's error inside a 200 answer: it is
            // handled as the same error in a status would be (another member tried).
            if let failure = (try? JSONDecoder().decode(StreamedError.self, from: raw))?.error {
                let message = failure.message ?? "an error without a message"
                let error = CatalogError.rejected(endpoint: endpoint, status: failure.httpCode ?? 500, message: message)
                if error.isRetryable {
                    round.failed(.refused(status: failure.httpCode ?? 500, message: message))
                    continue
                }
                throw error
            }
            preferred.prefer(members.endpoints[attempt.member])
            do {
                return try JSONDecoder().decode(R.self, from: raw)
            } catch {
                throw .rejected(endpoint: endpoint, status: status, message: "unexpected answer to \(path): \(error)")
            }
        }
        throw round.error
    }

    /// What one member made of one request.
    private enum Reply: Sendable {
        case answered(status: Int, body: Data)
        case failed(EndpointFailover.Outcome)
    }

    /// Sends one request to one member. AsyncHTTPClient's deadline ends at the response
    /// head; the race bounds the body too, so no member holds a request past `budget`.
    private func send(_ path: String, _ body: Data, to endpoint: String, within budget: Duration) async -> Reply {
        var request = HTTPClientRequest(url: endpoint + path)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(bytes: body))
        let (http, prepared) = (self.http, request)
        do {
            return try await withThrowingTaskGroup(of: Reply?.self) { group in
                group.addTask {
                    let response = try await http.execute(prepared, timeout: TimeAmount(budget))
                    let bytes = try await response.body.collect(upTo: 64 << 20)
                    return .answered(status: Int(response.status.code), body: Data(bytes.readableBytesView))
                }
                group.addTask {
                    try await Task.sleep(for: budget + .milliseconds(100))
                    return nil
                }
                let first = try await group.next() ?? nil
                group.cancelAll()
                return first ?? .failed(.noReply(reason: "no answer within \(EndpointFailover.seconds(budget))"))
            }
        } catch {
            return .failed(EndpointFailover.outcome(of: error, budget: budget))
        }
    }
}

/// The index of the member a client prefers, shared by every copy of that client.
private final class PreferredMember: Sendable {
    struct State: Sendable {
        var endpoints: [String]
        var preferred = 0
        var endpoint: String { endpoints[preferred] }
    }
    private let value: Mutex<State>

    init(_ endpoints: [String]) { value = Mutex(State(endpoints: endpoints)) }

    var state: State { value.withLock { $0 } }

    /// The member that answered goes first next time.
    func prefer(_ endpoint: String) {
        value.withLock { s in if let i = s.endpoints.firstIndex(of: endpoint) { s.preferred = i } }
    }

    /// A new list of members; the preferred one stays preferred when it is still listed.
    func replace(_ endpoints: [String]) {
        value.withLock { s in
            let current = s.endpoint
            s.endpoints = endpoints
            s.preferred = endpoints.firstIndex(of: current) ?? 0
        }
    }
}

/// How one request is spread over several etcd members: which member is tried next, how
/// long it may take, and what to throw when none served. A value, so that it is tested
/// without etcd; `EtcdClient` carries its decisions out.
struct EndpointFailover: Sendable {
    /// What one attempt on one member came to, when it did not serve the request.
    enum Outcome: Sendable, Equatable {
        /// No connection was made (refused, or not within the connect timeout): the
        /// request never left, the member is down.
        case notConnected(reason: String)
        /// The member may have taken the request but no answer came in its time: it may
        /// have been applied.
        case noReply(reason: String)
        /// The member answered that it cannot serve now (no leader, request timed out, …).
        case refused(status: Int, message: String)
    }

    /// The longest a member that is not the last one to try may take. A healthy member
    /// answers in milliseconds. A follower whose leader has just died waits etcd's own
    /// request timeout (7 s at the default settings) for a proposal that was lost, while
    /// the others elect a new leader within one or two election timeouts (1 s here): the
    /// next member then serves a request sent to it afresh.
    static let memberTimeout = Duration.seconds(2)

    let endpoints: [String]
    /// Member indices in the order they are tried.
    let order: [Int]
    let deadline: ContinuousClock.Instant
    /// Whether a request whose reply was lost may go to another member (false for lease
    /// grants).
    let resendingLostReplies: Bool
    /// Each failed attempt, in the order made.
    private(set) var failures: [(member: Int, outcome: Outcome)] = []
    private var tried = 0
    private var stopped = false

    init(endpoints: [String], preferred: Int, deadline: ContinuousClock.Instant, resendingLostReplies: Bool) {
        self.endpoints = endpoints
        self.order = Self.order(count: endpoints.count, preferred: preferred)
        self.deadline = deadline
        self.resendingLostReplies = resendingLostReplies
    }

    /// The preferred member first, then the others in the configured order after it.
    static func order(count: Int, preferred: Int) -> [Int] {
        guard count > 0 else { return [] }
        let first = (0..<count).contains(preferred) ? preferred : 0
        return (0..<count).map { (first + $0) % count }
    }

    /// The member to send the request to now and how long it may take, or nil when the
    /// request must end: every member was tried, the time is up, or a reply that was lost
    /// must not be sent again. Members still to try after this one share what is left; no
    /// member but the last gets more than `memberTimeout`.
    mutating func next(now: ContinuousClock.Instant) -> (member: Int, timeout: Duration)? {
        guard !stopped, tried < order.count else { return nil }
        let remaining = deadline - now
        guard remaining > .milliseconds(1) else { return nil }
        let left = order.count - tried
        let member = order[tried]
        tried += 1
        if left == 1 { return (member, remaining) }
        return (member, min(remaining / left, Self.memberTimeout))
    }

    /// Records how the attempt handed out last failed.
    mutating func failed(_ outcome: Outcome) {
        guard tried > 0 else { return }
        failures.append((order[tried - 1], outcome))
        if case .noReply = outcome, !resendingLostReplies { stopped = true }
    }

    /// What to throw when the request ended without being served. With one member, or
    /// when a lost reply stopped the request, it is that attempt's own error, as from a
    /// client of one member. Otherwise it names every member and what it did.
    var error: CatalogError {
        guard let last = failures.last else {
            return .unreachable(endpoint: endpoints.joined(separator: ", "), reason: "not sent: no time left")
        }
        if endpoints.count == 1 || stopped { return Self.error(endpoints[last.member], last.outcome) }
        var reasons = failures.map { "\(endpoints[$0.member]): \(Self.reason($0.outcome))" }
        reasons += order[tried...].map { "\(endpoints[$0]): not tried, no time left" }
        let answered = failures.filter { if case .notConnected = $0.outcome { false } else { true } }.count
        if answered == 0 {
            return .unreachable(endpoint: endpoints.joined(separator: ", "), reason: reasons.joined(separator: "; "))
        }
        return .noQuorum(answered: answered, of: endpoints.count, reasons: reasons.joined(separator: "; "))
    }

    static func error(_ endpoint: String, _ outcome: Outcome) -> CatalogError {
        switch outcome {
        case .notConnected(let reason), .noReply(let reason): return .unreachable(endpoint: endpoint, reason: reason)
        case .refused(let status, let message): return .rejected(endpoint: endpoint, status: status, message: message)
        }
    }

    /// One member's part of the line: what a proxy or the HTTP client says may span lines.
    static func reason(_ outcome: Outcome) -> String {
        let text: String
        switch outcome {
        case .notConnected(let reason), .noReply(let reason): text = reason
        case .refused(_, let message): text = message
        }
        return text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
            .joined(separator: " ")
    }

    /// Sorts a failure of the HTTP client: a connection that was never made is
    /// `notConnected`; anything later, or unknown, may have delivered the request.
    static func outcome(of error: any Error, budget: Duration) -> Outcome {
        if let e = error as? HTTPClientError {
            switch e {
            case .connectTimeout: return .notConnected(reason: "no connection within the connect timeout")
            case .deadlineExceeded: return .noReply(reason: "no answer within \(seconds(budget))")
            case .remoteConnectionClosed: return .noReply(reason: "the connection closed before the answer")
            default: break
            }
        }
        if let e = error as? ChannelError {
            switch e {
            case .connectTimeout: return .notConnected(reason: "no connection within the connect timeout")
            // The pooled connection of a member that just died: the request was not written.
            case .ioOnClosedChannel: return .notConnected(reason: "the connection was closed")
            default: break
            }
        }
        let text = "\(error)"
        // NIOPosix's NIOConnectionError (every address failed) describes itself so.
        if text.lowercased().contains("refused") { return .notConnected(reason: "connection refused") }
        if text.hasPrefix("Connection errors:") || text.hasPrefix("DNS error:") {
            return .notConnected(reason: text)
        }
        return .noReply(reason: text)
    }

    /// `1.7 s`: a duration as a person reads it in an error.
    static func seconds(_ d: Duration) -> String {
        let ms = d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000
        return "\(ms / 1000).\(ms % 1000 / 100) s"
    }
}

// grpc-gateway renders int64 as strings and leaves out zero values.
private struct Header: Decodable {}
/// `{"error": {"grpc_code": 14, "http_code": 503, "message": "etcdserver: no leader"}}`, as
/// the gateway streams it.
private struct StreamedError: Decodable {
    struct Failure: Decodable {
        var message: String?
        var httpCode: Int?
        enum CodingKeys: String, CodingKey {
            case message
            case httpCode = "http_code"
        }
    }
    var error: Failure?
}

private struct GatewayError: Decodable {
    var error: String?
    var message: String?
}
private struct ResponseHeader: Decodable { var revision: String? }
private struct RangeResponse: Decodable {
    var header: ResponseHeader?
    var kvs: [WireKV]?
    var count: String?
}
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
private struct MemberListResponse: Decodable {
    struct WireMember: Decodable {
        var id: String?
        var name: String?
        var peerURLs: [String]?
        var clientURLs: [String]?
        var isLearner: Bool?
        enum CodingKeys: String, CodingKey { case id = "ID", name, peerURLs, clientURLs, isLearner }
    }
    var members: [WireMember]?
}

private struct MemberAddResponse: Decodable {
    var member: MemberListResponse.WireMember?
    var members: [MemberListResponse.WireMember]?
}

extension MemberListResponse.WireMember {
    var member: EtcdClient.Member? {
        guard let id = id.flatMap(UInt64.init) else { return nil }
        return EtcdClient.Member(
            id: id, name: name ?? "", clientURLs: clientURLs ?? [], peerURLs: peerURLs ?? [],
            isLearner: isLearner ?? false)
    }
}

private struct LeaseTimeToLive: Decodable {
    var ttl: String?
    enum CodingKeys: String, CodingKey { case ttl = "TTL" }
}

private struct KeepAliveResponse: Decodable {
    struct Result: Decodable {
        var ttl: String?
        enum CodingKeys: String, CodingKey { case ttl = "TTL" }
    }
    var result: Result?
    var error: GatewayError?
}
struct WireKV: Decodable {
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
