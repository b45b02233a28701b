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
}

/// The answer of a call that returns nothing.
struct Done: Codable, Sendable {}

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

    func perform(_ step: Step, undo: Bool, cluster: VirtualCluster, image: GoldenImage?, on record: NodeRecord)
        async throws
    {
        let body = RemoteStep(cluster: cluster, step: step.description, undo: undo, image: image)
        do {
            let _: Done = try await client(record).post(
                "/\(API.version)/internal/steps", body: body, timeout: Self.stepTimeout)
        } catch {
            throw DaemonError.failed("on node \(record.name): \(error)")
        }
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
