import Synchronization
import VCModel

/// The summaries made of the cluster records last listed, each with the exact bytes it
/// was decoded from, so that a listing decodes only the records that changed since the
/// last one. A record is matched by its bytes, not by its revision: revisions start again
/// at 1 in an etcd whose data was made anew, bytes do not lie. Comparing the bytes costs
/// far less than decoding them (decoding 1,000 records as summaries took about 25 ms of
/// a debug vcd, most of it JSONDecoder's scan of each record).
///
/// Shared by every copy of a ``Catalog``; what one listing does not see any more (a
/// destroyed cluster) is dropped by it.
public final class ClusterSummaryCache: Sendable {
    private struct Entry: Sendable {
        var value: [UInt8]
        var summary: ClusterSummary
    }

    private let entries = Mutex<[String: Entry]>([:])

    public init() {}

    /// The summary of each of `records`, in their order, decoding with `decode` only those
    /// whose bytes differ from what this cache holds for their key.
    func summaries(
        of records: [KeyValue], decode: (KeyValue) throws(CatalogError) -> ClusterSummary
    ) throws(CatalogError) -> [ClusterSummary] {
        let known = entries.withLock { $0 }
        var fresh: [String: Entry] = [:]
        fresh.reserveCapacity(records.count)
        var out: [ClusterSummary] = []
        out.reserveCapacity(records.count)
        for kv in records {
            if let entry = known[kv.key], entry.value == kv.value {
                fresh[kv.key] = entry
                out.append(entry.summary)
            } else {
                let summary = try decode(kv)
                fresh[kv.key] = Entry(value: kv.value, summary: summary)
                out.append(summary)
            }
        }
        entries.withLock { $0 = fresh }
        return out
    }
}
