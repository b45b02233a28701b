import Foundation
import Synchronization
import Testing
import VCModel

@testable import VCCatalog

/// The mirror's state fed hand-made snapshots and watch events, and the rule that says
/// whether it may answer for a probe of etcd.
@Suite struct MirrorStateTests {
    static func summary(_ name: String, state: ClusterState = .running) -> ClusterSummary {
        let epoch = Date(timeIntervalSince1970: 0)
        return ClusterSummary(
            spec: .init(name: name, image: "i", vms: 1, vcpus: 1, memoryMiB: 128), state: state,
            network: .init(cidr: "10.0.1.0/24"), vms: [.init(name: "\(name)-1", node: "n1")], createdAt: epoch,
            updatedAt: epoch)
    }

    /// A record whose bytes say which summary it holds: `name:state`.
    static func kv(_ name: String, _ state: ClusterState = .running, revision: Int64 = 1) -> KeyValue {
        KeyValue(
            key: "/p/clusters/\(name)", value: Array("\(name):\(state.rawValue)".utf8), createRevision: 1,
            modRevision: revision, lease: 0)
    }

    static func put(_ name: String, _ state: ClusterState = .running, revision: Int64) -> WatchEvent {
        WatchEvent(kind: .put, kv: kv(name, state, revision: revision))
    }

    static func delete(_ name: String, revision: Int64) -> WatchEvent {
        WatchEvent(
            kind: .delete,
            kv: KeyValue(key: "/p/clusters/\(name)", value: [], createRevision: 0, modRevision: revision, lease: 0))
    }

    /// Counts what it decodes.
    final class Decodes: Sendable {
        private let keys = Mutex<[String]>([])
        var decoded: [String] { keys.withLock { $0 } }
        func forget() { keys.withLock { $0 = [] } }

        var decode: MirrorState<ClusterSummary>.Decode {
            { (kv) throws(CatalogError) -> ClusterSummary in
                self.keys.withLock { $0.append(kv.key) }
                let parts = String(decoding: kv.value, as: UTF8.self).split(separator: ":").map(String.init)
                guard parts.count == 2, let state = ClusterState(rawValue: parts[1]) else {
                    throw .corrupt(key: kv.key, reason: "not name:state")
                }
                return MirrorStateTests.summary(parts[0], state: state)
            }
        }
    }

    static func listed(_ kvs: [KeyValue], at revision: Int64, _ log: Decodes) -> MirrorState<ClusterSummary> {
        var state = MirrorState<ClusterSummary>()
        state.replace(with: PrefixSnapshot(kvs: kvs, revision: revision), decode: log.decode)
        return state
    }

    // MARK: snapshots

    @Test func aSnapshotDecodesOnlyRecordsWhoseBytesChanged() throws {
        let log = Decodes()
        var state = Self.listed([Self.kv("a"), Self.kv("b")], at: 2, log)
        #expect(try state.values().map(\.name) == ["a", "b"])
        #expect(log.decoded == ["/p/clusters/a", "/p/clusters/b"])
        log.forget()
        state.replace(
            with: PrefixSnapshot(kvs: [Self.kv("a"), Self.kv("b", .suspended, revision: 3)], revision: 3),
            decode: log.decode)
        #expect(log.decoded == ["/p/clusters/b"])
        #expect(try state.values() == [Self.summary("a"), Self.summary("b", state: .suspended)])
        #expect(state.revision == 3)
    }

    /// A fresh etcd numbers revisions from 1 again: the same revision with other bytes is
    /// another record.
    @Test func theSameRevisionWithOtherBytesIsDecodedAgain() throws {
        let log = Decodes()
        var state = Self.listed([Self.kv("a", .running, revision: 5)], at: 5, log)
        state.replace(with: PrefixSnapshot(kvs: [Self.kv("a", .failed, revision: 5)], revision: 5), decode: log.decode)
        #expect(try state.values() == [Self.summary("a", state: .failed)])
        #expect(log.decoded.count == 2)
    }

    @Test func aRecordNoLongerListedIsForgotten() throws {
        let log = Decodes()
        var state = Self.listed([Self.kv("a"), Self.kv("b")], at: 2, log)
        state.replace(with: PrefixSnapshot(kvs: [Self.kv("b")], revision: 3), decode: log.decode)
        #expect(try state.values().map(\.name) == ["b"])
        #expect(state.count == 1)
    }

    @Test func aSnapshotOlderThanWhatWasAppliedChangesNothing() throws {
        let log = Decodes()
        var state = Self.listed([Self.kv("a")], at: 2, log)
        state.apply([Self.put("b", revision: 4)], decode: log.decode)
        let taken = state.replace(with: PrefixSnapshot(kvs: [Self.kv("a")], revision: 3), decode: log.decode)
        #expect(!taken)
        #expect(try state.values().map(\.name) == ["a", "b"])
        #expect(state.revision == 4)
    }

    @Test func aResetTakesAnySnapshotAfterwards() throws {
        let log = Decodes()
        var state = Self.listed([Self.kv("a", revision: 9)], at: 9, log)
        state.reset()
        #expect(state.revision == 0 && state.count == 0)
        let taken = state.replace(
            with: PrefixSnapshot(kvs: [Self.kv("z", revision: 2)], revision: 2), decode: log.decode)
        #expect(taken)
        #expect(try state.values().map(\.name) == ["z"])
    }

    // MARK: events

    @Test func putsAndDeletesAreAppliedInOrderAndMoveTheRevision() throws {
        let log = Decodes()
        var state = Self.listed([Self.kv("a"), Self.kv("b")], at: 2, log)
        state.apply([Self.put("c", revision: 3)], decode: log.decode)
        state.apply([Self.delete("a", revision: 4), Self.put("b", .suspended, revision: 4)], decode: log.decode)
        #expect(try state.values() == [Self.summary("b", state: .suspended), Self.summary("c")])
        #expect(state.revision == 4)
    }

    /// A watch opened from the list's revision, or a list taken while the watch ran, hands
    /// over changes the state holds already.
    @Test func changesAtOrBelowTheAppliedRevisionAreSkipped() throws {
        let log = Decodes()
        var state = Self.listed([Self.kv("a", revision: 2)], at: 5, log)
        log.forget()
        state.apply([Self.delete("a", revision: 3), Self.put("b", revision: 5)], decode: log.decode)
        #expect(try state.values().map(\.name) == ["a"])
        #expect(log.decoded.isEmpty)
        state.apply([Self.put("b", revision: 6)], decode: log.decode)
        #expect(try state.values().map(\.name) == ["a", "b"])
    }

    /// One transaction's changes share a revision and arrive in one message: all apply.
    @Test func everyChangeOfOneRevisionApplies() throws {
        let log = Decodes()
        var state = Self.listed([], at: 1, log)
        state.apply(
            [Self.put("a", revision: 2), Self.put("b", revision: 2), Self.put("c", revision: 2)], decode: log.decode)
        #expect(state.count == 3)
    }

    @Test func aPutWithTheSameBytesIsNotDecodedAgain() throws {
        let log = Decodes()
        var state = Self.listed([Self.kv("a", revision: 2)], at: 2, log)
        log.forget()
        state.apply([Self.put("a", revision: 3)], decode: log.decode)
        #expect(log.decoded.isEmpty)
        #expect(state.revision == 3)
    }

    @Test func aValueThatCannotBeDecodedFailsTheListingUntilItIsGone() throws {
        let log = Decodes()
        var state = Self.listed([Self.kv("a")], at: 2, log)
        let bad = KeyValue(
            key: "/p/clusters/x", value: Array("garbage".utf8), createRevision: 3, modRevision: 3, lease: 0)
        state.apply([WatchEvent(kind: .put, kv: bad)], decode: log.decode)
        #expect(throws: CatalogError.self) { try state.values() }
        state.apply([Self.delete("x", revision: 4)], decode: log.decode)
        #expect(try state.values().map(\.name) == ["a"])
    }

    // MARK: freshness

    @Test func currentWhenEveryChangeUpToEtcdsRevisionIsApplied() {
        let state = Self.listed([Self.kv("a", revision: 7)], at: 7, Decodes())
        #expect(state.freshness(for: PrefixProbe(revision: 7, count: 1, latestChange: 0), probedAt: 7) == .current)
    }

    /// Writes under other prefixes move etcd's revision; the watch of this one sees none.
    @Test func currentWhenOnlyOtherPrefixesChanged() {
        let state = Self.listed([Self.kv("a", revision: 3), Self.kv("b", revision: 5)], at: 5, Decodes())
        #expect(state.freshness(for: PrefixProbe(revision: 40, count: 2, latestChange: 0), probedAt: 5) == .current)
    }

    @Test func behindWhenAKeyChangedAfterWhatWasApplied() {
        let state = Self.listed([Self.kv("a", revision: 3)], at: 5, Decodes())
        #expect(state.freshness(for: PrefixProbe(revision: 9, count: 1, latestChange: 8), probedAt: 5) == .behind)
        #expect(state.freshness(for: PrefixProbe(revision: 9, count: 2, latestChange: 8), probedAt: 5) == .behind)
    }

    /// A delete leaves no key to show its revision: only the count tells.
    @Test func behindWhenAKeyWasDeletedAfterWhatWasApplied() {
        let state = Self.listed([Self.kv("a", revision: 3), Self.kv("b", revision: 4)], at: 5, Decodes())
        #expect(state.freshness(for: PrefixProbe(revision: 9, count: 1, latestChange: 0), probedAt: 5) == .behind)
    }

    @Test func currentOnceTheWatchAppliedWhatTheProbeSaw() {
        let log = Decodes()
        var state = Self.listed([Self.kv("a", revision: 3), Self.kv("b", revision: 4)], at: 5, log)
        let probe = PrefixProbe(revision: 12, count: 2, latestChange: 8)
        #expect(state.freshness(for: probe, probedAt: 5) == .behind)
        state.apply([Self.delete("a", revision: 6)], decode: log.decode)
        #expect(state.freshness(for: probe, probedAt: 5) == .behind)
        state.apply([Self.put("c", revision: 8)], decode: log.decode)
        #expect(state.freshness(for: probe, probedAt: 5) == .current)
    }

    /// Applied past the probe: fresher than the linearizable read, which is allowed.
    @Test func currentWhenTheWatchIsAheadOfTheProbe() {
        let log = Decodes()
        var state = Self.listed([Self.kv("a", revision: 3)], at: 5, log)
        state.apply([Self.put("b", revision: 11), Self.put("c", revision: 11)], decode: log.decode)
        #expect(state.freshness(for: PrefixProbe(revision: 10, count: 2, latestChange: 7), probedAt: 5) == .current)
    }

    @Test func resetWhenEtcdIsBehindWhatTheMirrorApplied() {
        let state = Self.listed([Self.kv("a", revision: 30)], at: 30, Decodes())
        #expect(state.freshness(for: PrefixProbe(revision: 4, count: 1, latestChange: 0), probedAt: 30) == .reset)
    }

    @Test func anEmptyPrefixIsCurrentWhenEtcdHoldsNoKeyEither() {
        let state = MirrorState<ClusterSummary>()
        #expect(state.freshness(for: PrefixProbe(revision: 3, count: 0, latestChange: 0), probedAt: 0) == .current)
        #expect(state.freshness(for: PrefixProbe(revision: 3, count: 1, latestChange: 2), probedAt: 0) == .behind)
    }

    @Test func backOffDoublesToFiveSeconds() {
        #expect(MirrorBackoff.delay(afterFailures: 0) == .zero)
        #expect(MirrorBackoff.delay(afterFailures: 1) == .milliseconds(100))
        #expect(MirrorBackoff.delay(afterFailures: 3) == .milliseconds(400))
        #expect(MirrorBackoff.delay(afterFailures: 7) == .seconds(5))
        #expect(MirrorBackoff.delay(afterFailures: 1000) == .seconds(5))
    }
}
