import Foundation

/// One change a watch saw under its prefix.
public struct WatchEvent: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case put
        case delete
    }

    public var kind: Kind
    /// For a delete only the key and the delete's revision (`modRevision`) are set.
    public var kv: KeyValue

    public init(kind: Kind, kv: KeyValue) {
        self.kind = kind
        self.kv = kv
    }
}

/// What one message of etcd's watch stream says, as `EtcdClient.watch` hands it on.
public enum WatchMessage: Sendable, Equatable {
    /// The watch is open; etcd was at `revision`. Changes from the start revision follow.
    case created(revision: Int64)
    /// Changes in revision order. etcd keeps the changes of one revision in one message,
    /// but a message catching up on history carries etcd's revision at sending time in its
    /// header, not the last change's, so only the events say what was applied.
    case changes([WatchEvent])
    /// The history from the start revision was compacted away: list again and watch from
    /// after that list.
    case compacted(revision: Int64)
    /// etcd ended the watch for another reason.
    case canceled(reason: String)

    /// The message in one line of the gateway's stream, nil for an empty line or one that
    /// says nothing a mirror needs (a progress notice). The gateway leaves out zero and
    /// false fields: a PUT has no `type`, the first watch has no `watch_id`.
    static func decode(line: some Collection<UInt8>, endpoint: String) throws(CatalogError) -> WatchMessage? {
        guard line.contains(where: { $0 != UInt8(ascii: " ") && $0 != UInt8(ascii: "\r") }) else { return nil }
        let wire: WireWatchLine
        do {
            wire = try JSONDecoder().decode(WireWatchLine.self, from: Data(line))
        } catch {
            throw .rejected(
                endpoint: endpoint, status: 200,
                message:
                    "unexpected line in the watch stream: \(String(decoding: Data(line).prefix(200), as: UTF8.self))"
            )
        }
        if let error = wire.error { throw .rejected(endpoint: endpoint, status: 200, message: error.message) }
        guard let result = wire.result else { return nil }
        if result.canceled == true {
            if let compacted = result.compactRevision.flatMap(Int64.init), compacted > 0 {
                return .compacted(revision: compacted)
            }
            return .canceled(reason: result.cancelReason ?? "etcd canceled the watch without a reason")
        }
        if result.created == true {
            return .created(revision: result.header?.revision.flatMap(Int64.init) ?? 0)
        }
        guard let events = result.events, !events.isEmpty else { return nil }
        var out: [WatchEvent] = []
        out.reserveCapacity(events.count)
        for event in events {
            let kv = try event.kv.decoded()
            switch event.type {
            case nil, "PUT": out.append(WatchEvent(kind: .put, kv: kv))
            case "DELETE": out.append(WatchEvent(kind: .delete, kv: kv))
            case let other?:
                throw .rejected(endpoint: endpoint, status: 200, message: "watch event of unknown type \(other)")
            }
        }
        return .changes(out)
    }
}

/// Cuts a byte stream into newline-terminated lines, keeping at most `limit` bytes of a
/// line not yet ended, so that a stream without newlines cannot take all memory.
struct LineSplitter: Sendable {
    let limit: Int
    private var pending: [UInt8] = []

    init(limit: Int) { self.limit = limit }

    /// The lines `bytes` completes, without their newline.
    mutating func append(_ bytes: some Collection<UInt8>) throws(CatalogError) -> [[UInt8]] {
        var lines: [[UInt8]] = []
        var rest = bytes[...]
        while let newline = rest.firstIndex(of: UInt8(ascii: "\n")) {
            if pending.isEmpty {
                lines.append(Array(rest[..<newline]))
            } else {
                pending.append(contentsOf: rest[..<newline])
                lines.append(pending)
                pending = []
            }
            rest = rest[rest.index(after: newline)...]
        }
        pending.append(contentsOf: rest)
        if pending.count > limit {
            throw .corrupt(key: "(watch stream)", reason: "a line of more than \(limit) bytes")
        }
        return lines
    }
}

// grpc-gateway renders int64 as strings and leaves out zero values.
struct WireWatchLine: Decodable {
    struct Header: Decodable { var revision: String? }
    struct Event: Decodable {
        var type: String?
        var kv: WireKV
    }
    struct Result: Decodable {
        var header: Header?
        var created: Bool?
        var canceled: Bool?
        var compactRevision: String?
        var cancelReason: String?
        var events: [Event]?

        enum CodingKeys: String, CodingKey {
            case header, created, canceled, events
            case compactRevision = "compact_revision"
            case cancelReason = "cancel_reason"
        }
    }
    /// A stream error is `{"error":{"message":…,"grpc_code":…}}`; a refused request
    /// `{"error":"…","message":"…"}`.
    struct StreamError: Decodable {
        var message: String

        init(from decoder: any Decoder) throws {
            if let text = try? decoder.singleValueContainer().decode(String.self) {
                message = text
                return
            }
            struct Object: Decodable { var message: String? }
            message = try Object(from: decoder).message ?? "the watch stream failed"
        }
    }

    var result: Result?
    var error: StreamError?
}
