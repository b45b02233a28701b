import Foundation
import Hummingbird
import NIOCore
import Testing

@testable import VCCatalog

/// etcd's gateway streams a keep-alive's answer, so an error comes inside a 200 answer
/// (`{"error": {...}}`). Two stand-in members on loopback that answer every keep-alive
/// the same way (a fake of etcd's gateway, for what a real member cannot be made to say
/// on demand): the renewal goes on to the next member after such an error, and with no
/// member left it fails; it is never taken for a lease that is gone (TTL 0).
@Suite struct EtcdStreamedErrorTests {
    static let noLeader =
        #"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#
    static let renewed = #"{"result":{"header":{"revision":"1"},"ID":"7","TTL":"3"}}"#

    @Test func aKeepAliveErrorInsideAnAnswerIsTriedOnTheNextMember() async throws {
        try await withStandIns([Self.noLeader, Self.renewed]) { (endpoints: [String]) async throws in
            let client = EtcdClient(endpoints: endpoints)
            #expect(try await client.keepAlive(lease: 7, by: .now + .seconds(2)) == 3)
            #expect(client.endpoint == endpoints[1], "the member that renewed is preferred next")
        }
    }

    @Test func aKeepAliveErrorFromEveryMemberFailsWithEtcdsMessage() async throws {
        try await withStandIns([Self.noLeader, Self.noLeader]) { (endpoints: [String]) async throws in
            let client = EtcdClient(endpoints: endpoints)
            let error = await #expect(throws: CatalogError.self) {
                try await client.keepAlive(lease: 7, by: .now + .seconds(2))
            }
            #expect("\(error.map { "\($0)" } ?? "")".contains("no leader"))
        }
    }

    /// Runs one HTTP server per answer on a free loopback port, each answering every
    /// keep-alive with its answer, for as long as `body` runs.
    func withStandIns(_ answers: [String], _ body: @Sendable ([String]) async throws -> Void) async throws {
        let (bound, sink) = AsyncStream.makeStream(of: (index: Int, port: Int).self)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (index, answer) in answers.enumerated() {
                let router = Router()
                router.post("/v3/lease/keepalive") { _, _ in
                    Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: answer)))
                }
                let app = Application(
                    router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                    onServerRunning: { channel in sink.yield((index, channel.localAddress?.port ?? 0)) })
                group.addTask { try await app.runService() }
            }
            var ports = [Int](repeating: 0, count: answers.count)
            var waiting = bound.makeAsyncIterator()
            for _ in answers {
                if let next = await waiting.next() { ports[next.index] = next.port }
            }
            try await body(ports.map { "http://127.0.0.1:\($0)" })
            group.cancelAll()
        }
    }
}
