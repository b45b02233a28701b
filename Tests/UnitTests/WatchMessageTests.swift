import Foundation
import Testing

@testable import VCCatalog

/// The lines of etcd 3.4's gateway watch stream, as seen from a real etcd 3.4.23.
@Suite struct WatchMessageTests {
    static func message(_ line: String) throws -> WatchMessage? {
        try WatchMessage.decode(line: Array(line.utf8), endpoint: "http://e")
    }

    static let header =
        #""header":{"cluster_id":"17368989521238926805","member_id":"1","revision":"4","raft_term":"2"}"#

    @Test func theFirstMessageSaysTheWatchIsOpenWithoutAWatchID() throws {
        #expect(try Self.message(#"{"result":{\#(Self.header),"created":true}}"#) == .created(revision: 4))
    }

    @Test func aPutHasNoTypeAndADeleteOnlyItsKeyAndRevision() throws {
        let line =
            #"{"result":{\#(Self.header),"events":[{"kv":{"key":"L3AvYy9j","create_revision":"5","mod_revision":"5","version":"1","value":"dGhyZWU="}},{"type":"DELETE","kv":{"key":"L3AvYy9h","mod_revision":"6"}}]}}"#
        let expected = WatchMessage.changes([
            WatchEvent(
                kind: .put,
                kv: KeyValue(key: "/p/c/c", value: Array("three".utf8), createRevision: 5, modRevision: 5, lease: 0)),
            WatchEvent(
                kind: .delete, kv: KeyValue(key: "/p/c/a", value: [], createRevision: 0, modRevision: 6, lease: 0)),
        ])
        #expect(try Self.message(line) == expected)
    }

    @Test func aCompactedHistoryCancelsWithItsRevision() throws {
        let line =
            #"{"result":{"header":{"cluster_id":"1","member_id":"1","raft_term":"2"},"canceled":true,"compact_revision":"7"}}"#
        #expect(try Self.message(line) == .compacted(revision: 7))
    }

    @Test func aCancelWithoutCompactionSaysWhy() throws {
        let line = #"{"result":{\#(Self.header),"canceled":true,"cancel_reason":"permission denied"}}"#
        #expect(try Self.message(line) == .canceled(reason: "permission denied"))
    }

    @Test func aStreamErrorCarriesEtcdsMessage() {
        let object =
            #"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#
        #expect(throws: CatalogError.self) { try Self.message(object) }
        do {
            _ = try Self.message(#"{"error":"invalid character","message":"invalid character","code":2}"#)
            Issue.record("an error line was taken as a message")
        } catch {
            #expect("\(error)".contains("invalid character"))
        }
    }

    @Test func emptyLinesAndProgressNoticesSayNothing() throws {
        #expect(try Self.message("") == nil)
        #expect(try Self.message("\r") == nil)
        #expect(try Self.message(#"{"result":{\#(Self.header)}}"#) == nil)
    }

    @Test func aLineThatIsNotJSONIsRefused() {
        #expect(throws: CatalogError.self) { try Self.message("<html>") }
    }

    @Test func linesAreCutAtNewlinesAcrossChunks() throws {
        var lines = LineSplitter(limit: 100)
        #expect(try lines.append(Array("{\"a\"".utf8)).isEmpty)
        #expect(
            try lines.append(Array(":1}\n{\"b\":2}\n{".utf8)).map { String(decoding: $0, as: UTF8.self) } == [
                "{\"a\":1}", "{\"b\":2}",
            ])
        #expect(try lines.append(Array("}\n".utf8)).map { String(decoding: $0, as: UTF8.self) } == ["{}"])
    }

    @Test func aLineLongerThanTheLimitIsRefused() {
        var lines = LineSplitter(limit: 8)
        #expect(throws: CatalogError.self) { _ = try lines.append(Array("0123456789".utf8)) }
    }
}
