import AsyncHTTPClient
import Foundation
import VCCatalog
import VCClient
import VCModel

/// The live nodes as the catalog lists them, read at most once a second: every step of an
/// operation asks where it runs, and a node list a second old is fresh enough for that (a
/// node that died since makes its step fail, which the operation handles like any other).
actor NodeDirectory {
    private let catalog: Catalog
    private var cached: (at: ContinuousClock.Instant, nodes: [String: NodeRecord])?

    init(catalog: Catalog) { self.catalog = catalog }

    func live() async throws(CatalogError) -> [String: NodeRecord] {
        if let cached, ContinuousClock.now - cached.at < .seconds(1) { return cached.nodes }
        let nodes = Dictionary(try await catalog.nodes().map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        cached = (ContinuousClock.now, nodes)
        return nodes
    }

    /// Forgets the cache, so the next question reads the catalog.
    func invalidate() { cached = nil }
}

/// One plan step sent to the node that carries it out.
struct RemoteStep: Codable, Sendable {
    var cluster: VirtualCluster
    var step: String
    var undo: Bool
    var image: GoldenImage?
    /// Where the VMs of a migration ran before (see `StepRunner.origins`).
    var origins: [String: ClusterOperation.Origin]? = nil
}

/// The answer of a call that returns nothing.
struct Done: Codable, Sendable {}

/// What a step had to say beside "done" (how a migration went).
struct StepNote: Codable, Sendable { var note: String? }

/// Domain states of some VMs, asked of the node that runs them.
struct DomainStatesRequest: Codable, Sendable { var names: [String] }

/// Calls from this vcd to another node's vcd, over the other's TCP API with the token
/// every node of the cluster shares.
struct PeerCalls: Sendable {
    let token: String

    func client(_ record: NodeRecord) -> VCDClient {
        VCDClient(endpoint: record.api, token: token, http: VCDClient.sharedHTTP)
    }

    static let stepTimeout = Duration.seconds(30 * 60)

    func perform(
        _ step: Step, undo: Bool, cluster: VirtualCluster, image: GoldenImage?,
        origins: [String: ClusterOperation.Origin] = [:], on record: NodeRecord
    ) async throws -> String? {
        let body = RemoteStep(
            cluster: cluster, step: step.description, undo: undo, image: image, origins: origins.isEmpty ? nil : origins
        )
        do {
            let answer: StepNote = try await client(record).post(
                "/\(API.version)/internal/steps", body: body, timeout: Self.stepTimeout)
            return answer.note
        } catch {
            throw DaemonError.failed("on node \(record.name): \(error)")
        }
    }

    /// Whether the node's vcd answers within `bound`: asked of a node without a lease before
    /// an undo is sent to it, so that one that is down costs at most `bound`.
    func answers(_ record: NodeRecord, within bound: Duration = .seconds(2)) async -> Bool {
        await within(bound) { () async -> Bool? in
            let states: [String: String]? = try? await client(record).post(
                "/\(API.version)/internal/domains", body: DomainStatesRequest(names: []), timeout: bound)
            return states != nil
        } ?? false
    }

    func domainStates(_ names: [String], on record: NodeRecord) async throws -> [String: String] {
        do {
            return try await client(record).post(
                "/\(API.version)/internal/domains", body: DomainStatesRequest(names: names), timeout: .seconds(30))
        } catch {
            throw DaemonError.unavailable("node \(record.name) does not answer: \(error)")
        }
    }
}

/// A live node tells a node it found lost (its registration gone from etcd), before it
/// fences it: one cut off from etcd but not from the others stops its VMs at once.
struct LostCall: Codable, Sendable {
    /// The lease its registration was last seen under: a node that holds another one now
    /// (it registered again), or got the call late, is not the one found lost.
    var lease: Int64
    var by: String
}
/// How many VMs the node stopped; nil when it holds its lease (it was not lost).
struct LostAnswer: Codable, Sendable { var stopped: Int? }

extension PeerCalls {
    /// How long a node found lost may take to connect: on the nodes' own network a connect
    /// takes well under a millisecond, so one not made by then is not coming.
    static let lostConnectTimeout = Duration.milliseconds(300)
    /// How long a node found lost, once reached, is waited for to say its VMs are stopped.
    static let lostAnswerBound = Duration.seconds(3)
    /// The calls to a lost node have a client of their own: a connect that fails is not
    /// tried again (AsyncHTTPClient's default retries until the request's deadline), and
    /// an idle connection is closed after a second, so that a call never goes down one
    /// kept from before the node died.
    static let lostHTTP = HTTPClient(
        eventLoopGroupProvider: .singleton,
        configuration: {
            var configuration = HTTPClient.Configuration(
                timeout: .init(connect: .init(lostConnectTimeout), read: .init(lostAnswerBound)))
            configuration.connectionPool.retryConnectionEstablishment = false
            configuration.connectionPool.idleTimeout = .seconds(1)
            return configuration
        }())

    /// Tells `record`'s vcd that it was found lost; its answer, nil if there was none.
    func tellLost(_ record: NodeRecord, lease: Int64, by finder: String) async -> LostAnswer? {
        try? await VCDClient(endpoint: record.api, token: token, http: Self.lostHTTP).post(
            "/\(API.version)/internal/lost", body: LostCall(lease: lease, by: finder), timeout: Self.lostAnswerBound)
    }
}

/// A node whose lease ran out asks another how long etcd gives that lease.
struct LeaseQuestion: Codable, Sendable { var lease: Int64 }
/// etcd's answer (seconds left, -1 expired), nil when etcd did not answer in time.
struct LeaseAnswer: Codable, Sendable { var seconds: Int? }

extension PeerCalls {
    /// What `record`'s vcd hears from etcd about `lease` (`SelfFence`), within `bound`.
    func leaseLeft(_ lease: Int64, asking record: NodeRecord, within bound: Duration = .seconds(1)) async
        -> SelfFence.Answer
    {
        let answer = await within(bound) { () async -> LeaseAnswer? in
            try? await client(record).post(
                "/\(API.version)/internal/lease", body: LeaseQuestion(lease: lease), timeout: bound)
        }
        guard let answer else { return .silent }
        return answer.seconds.map { .left(seconds: $0) } ?? .unknown
    }
}

/// The initiator names the storage node is to fence.
struct FenceCall: Codable, Sendable { var initiators: [String] }

extension PeerCalls {
    /// Asks the storage node to fence `initiators`; it answers once tgtd lists none of their
    /// connections.
    func fence(_ initiators: [String], on storage: NodeRecord) async throws(DaemonError) {
        do {
            let _: Done = try await client(storage).post(
                "/\(API.version)/internal/fence", body: FenceCall(initiators: initiators), timeout: .seconds(30))
        } catch {
            throw Self.refusal(error, by: storage)
        }
    }
}

/// Which node asks the storage node about its import.
struct ImportCall: Codable, Sendable { var importer: String }

/// An image for the storage node to remove: a ready one (no importer), or the named
/// node's discarded import.
struct ImageRemoval: Codable, Sendable { var importer: String? }

extension PeerCalls {
    /// Asks the storage node to allocate and export an import's file for this node.
    func openImport(_ image: String, importer: String, on storage: NodeRecord) async throws(DaemonError)
        -> ImageStore.Grant
    {
        do {
            return try await client(storage).post(
                "/\(API.version)/internal/imports/\(image)", body: ImportCall(importer: importer),
                timeout: .seconds(120))
        } catch {
            throw Self.refusal(error, by: storage)
        }
    }

    /// Asks the storage node to remove an import's target once its write is complete.
    func closeImport(_ image: String, importer: String, on storage: NodeRecord) async throws(DaemonError) {
        do {
            let _: Done = try await client(storage).post(
                "/\(API.version)/internal/imports/\(image)/close", body: ImportCall(importer: importer),
                timeout: .seconds(120))
        } catch {
            throw Self.refusal(error, by: storage)
        }
    }

    /// Asks the storage node to remove an image (`importer` nil) or a discarded import.
    func removeImage(_ image: String, importer: String?, on storage: NodeRecord) async throws(DaemonError) {
        do {
            let _: Done = try await client(storage).post(
                "/\(API.version)/internal/images/\(image)/remove", body: ImageRemoval(importer: importer),
                timeout: .seconds(120))
        } catch {
            throw Self.refusal(error, by: storage)
        }
    }

    /// The storage node's answer as this node's own error: its refusal keeps its kind
    /// (invalid, conflict, …) and its line; a storage node that does not answer is a daemon
    /// that is down.
    static func refusal(_ error: ClientError, by storage: NodeRecord) -> DaemonError {
        switch error {
        case .api(let answer, _):
            let name = "storage node \(storage.name)"
            let line = answer.message.contains(name) ? answer.message : "\(name): \(answer.message)"
            switch answer.code {
            case "invalid": return .invalid(line)
            case "not-found": return .notFound(line)
            case "conflict": return .conflict(line)
            case "unavailable": return .unavailable(line)
            case "too-large": return .tooLarge(line)
            default: return .failed(line)
            }
        case .unreachable(_, let reason):
            return .unavailable("storage node \(storage.name) does not answer (\(reason)); start its vcd and try again")
        case .protocolError, .unauthorized:
            return .failed("storage node \(storage.name): \(error)")
        }
    }
}
