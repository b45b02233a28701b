/// The keys under one prefix as a mirror holds them, each value decoded once, and the
/// revision through which every change under the prefix is applied. A value: the
/// list-then-watch shell (``PrefixMirror``) feeds it snapshots and watch events, and a
/// listing asks it whether it is as fresh as a linearizable read (`freshness`).
///
/// Decoding is given as a function so that the same state mirrors clusters as summaries
/// and, later, nodes as records.
public struct MirrorState<Value: Sendable>: Sendable {
    struct Entry: Sendable {
        /// Kept to decode a key again only when its bytes change: revisions start again at
        /// 1 in an etcd whose data was made anew, bytes do not lie.
        var bytes: [UInt8]
        var modRevision: Int64
        /// A value that cannot be decoded fails the listing, as reading it from etcd does.
        var value: Result<Value, CatalogError>
    }

    public typealias Decode = @Sendable (KeyValue) throws(CatalogError) -> Value

    private(set) var entries: [String: Entry] = [:]
    /// Every change under the prefix up to and including this revision is applied; 0 until
    /// the first snapshot.
    public private(set) var revision: Int64 = 0

    public init() {}

    /// How many keys the prefix holds as far as the mirror knows.
    public var count: Int { entries.count }

    /// Takes `snapshot` (every key under the prefix at its revision) as the whole state,
    /// decoding only the values whose bytes differ from those held. A snapshot older than
    /// what was applied already changes nothing (false): its changes are all in.
    @discardableResult
    public mutating func replace(with snapshot: PrefixSnapshot, decode: Decode) -> Bool {
        guard snapshot.revision >= revision else { return false }
        var fresh: [String: Entry] = [:]
        fresh.reserveCapacity(snapshot.kvs.count)
        for kv in snapshot.kvs {
            fresh[kv.key] = entry(for: kv, decode: decode)
        }
        entries = fresh
        revision = snapshot.revision
        return true
    }

    /// Applies the changes of one watch message. Changes at or below `revision` are in
    /// already (a snapshot taken while the watch ran, or a watch opened again) and are
    /// skipped; etcd never splits one revision's changes over two messages.
    public mutating func apply(_ events: [WatchEvent], decode: Decode) {
        let applied = revision
        for event in events where event.kv.modRevision > applied {
            switch event.kind {
            case .put: entries[event.kv.key] = entry(for: event.kv, decode: decode)
            case .delete: entries[event.kv.key] = nil
            }
            revision = max(revision, event.kv.modRevision)
        }
    }

    /// Forgets everything, for an etcd whose revisions went back (its data made anew):
    /// the next snapshot is taken whatever its revision.
    public mutating func reset() {
        entries = [:]
        revision = 0
    }

    /// Every value, sorted by key; the first that could not be decoded is thrown.
    public func values() throws(CatalogError) -> [Value] {
        var out: [Value] = []
        out.reserveCapacity(entries.count)
        for key in entries.keys.sorted() {
            out.append(try entries[key]!.value.get())
        }
        return out
    }

    private func entry(for kv: KeyValue, decode: Decode) -> Entry {
        if var known = entries[kv.key], known.bytes == kv.value {
            known.modRevision = kv.modRevision
            return known
        }
        let value: Result<Value, CatalogError>
        do throws(CatalogError) {
            value = .success(try decode(kv))
        } catch {
            value = .failure(error)
        }
        return Entry(bytes: kv.value, modRevision: kv.modRevision, value: value)
    }

    /// Whether the mirror may answer for etcd as `probe` saw it. `probedAt` is the
    /// mirror's revision when the probe was sent: the probe's latest change is of the keys
    /// changed after it.
    ///
    /// The mirror is current when it applied every change up to etcd's revision, or when
    /// no key that exists now was changed after what it applied and it holds as many keys
    /// as etcd: every key etcd holds then has the value the mirror holds (it was last
    /// changed at or before the mirror's revision), and with as many keys there is none
    /// the mirror holds that etcd deleted. This matters because etcd's revision moves
    /// with every write under other prefixes too, which this watch never sees.
    public func freshness(for probe: PrefixProbe, probedAt: Int64) -> Freshness {
        if probe.revision < probedAt { return .reset }
        if revision >= probe.revision { return .current }
        if revision >= probe.latestChange && entries.count == probe.count { return .current }
        return .behind
    }
}

/// What a listing makes of a mirror, against a linearizable probe of etcd.
public enum Freshness: Sendable, Equatable {
    /// The mirror holds what etcd held when probed, or later: serve from it.
    case current
    /// Changes etcd had when probed are not applied yet: wait a little for the watch,
    /// else read etcd.
    case behind
    /// etcd is at an older revision than the mirror applied: its data was made anew.
    /// Read etcd and list again.
    case reset
}

/// How long a mirror waits before listing and watching again after its watch failed:
/// doubling from 100 ms, at most 5 s.
public enum MirrorBackoff {
    public static func delay(afterFailures failures: Int) -> Duration {
        guard failures > 0 else { return .zero }
        return min(.milliseconds(100) * (1 << min(failures - 1, 10)), .seconds(5))
    }
}
