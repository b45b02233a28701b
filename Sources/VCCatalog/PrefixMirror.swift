import Logging

/// The keys under one etcd prefix, decoded and kept up to date by list-then-watch, so that
/// a listing costs one small linearizable probe instead of a range over every value.
///
/// `follow` lists the prefix, watches it from the list's revision on and applies every
/// change; on a compaction, a canceled or broken watch it lists again, after a back-off
/// when the watch failed. `values` never answers staler than a linearizable read: it
/// probes etcd (``EtcdClient/probe(prefix:changedAfter:)``), serves from the mirror when
/// ``MirrorState/freshness(for:probedAt:)`` says it is current, waits at most
/// `catchUpBound` for the watch when it is behind, and otherwise reads the prefix as
/// before (and takes that read as its state), which is only slower.
///
/// Without `follow` running (a `vc` process, a test), `values` still answers correctly:
/// every listing falls back to reading etcd, and a probe that finds nothing changed since
/// serves the last read.
public actor PrefixMirror<Value: Sendable> {
    public nonisolated let prefix: String
    /// How long a listing waits for the watch to apply changes the probe saw.
    public nonisolated let catchUpBound: Duration
    private let decode: MirrorState<Value>.Decode
    private var state = MirrorState<Value>()
    /// `state.values()` until the state changes.
    private var listing: [Value]?
    /// A watch is open and applying changes: waiting for it is worth it.
    private var watching = false
    private var failures = 0
    private var resync: AsyncStream<Void>.Continuation?
    /// How many listings the mirror answered, and how many read etcd instead.
    public private(set) var served: (mirror: Int, etcd: Int) = (0, 0)

    public init(
        prefix: String, catchUpBound: Duration = .milliseconds(200), decode: @escaping MirrorState<Value>.Decode
    ) {
        self.prefix = prefix
        self.catchUpBound = catchUpBound
        self.decode = decode
    }

    /// The revision through which every change is applied (0 before the first list).
    public var revision: Int64 { state.revision }

    /// Every value under the prefix, sorted by key, as fresh as a linearizable read.
    public nonisolated func values(from etcd: EtcdClient) async throws(CatalogError) -> [Value] {
        let probedAt = await revision
        let probe = try await etcd.probe(prefix: prefix, changedAfter: probedAt)
        switch try await answer(probe, probedAt: probedAt) {
        case .some(let values): return values
        case nil: break
        }
        if await isWatching {
            let deadline = ContinuousClock.now + catchUpBound
            while ContinuousClock.now < deadline, await isWatching {
                // The watch hands changes over within a millisecond or two of their commit.
                try? await Task.sleep(for: .milliseconds(2))
                if let values = try await answer(probe, probedAt: probedAt) { return values }
            }
            // A watch on a member cut off from the others would never catch up.
            await requestResync()
        }
        return try await absorb(try await etcd.snapshot(prefix: prefix))
    }

    /// The listing when the state may answer for `probe`, else nil; a reset is told to
    /// the follower.
    private func answer(_ probe: PrefixProbe, probedAt: Int64) throws(CatalogError) -> [Value]? {
        switch state.freshness(for: probe, probedAt: probedAt) {
        case .current:
            served.mirror += 1
            return try currentValues()
        case .behind: return nil
        case .reset:
            state.reset()
            listing = nil
            resync?.yield()
            return nil
        }
    }

    private var isWatching: Bool { watching }

    private func currentValues() throws(CatalogError) -> [Value] {
        if let listing { return listing }
        let values = try state.values()
        listing = values
        return values
    }

    /// Takes the snapshot a listing read instead; answers the state afterwards
    /// (the snapshot's, or a later one the watch applied meanwhile).
    private func absorb(_ snapshot: PrefixSnapshot) throws(CatalogError) -> [Value] {
        served.etcd += 1
        if state.replace(with: snapshot, decode: decode) { listing = nil }
        return try currentValues()
    }

    /// The follower's own list, which the watch goes on from: taken even when it is older
    /// than what was applied (etcd's data made anew, unnoticed by any listing).
    private func restart(from snapshot: PrefixSnapshot) {
        if snapshot.revision < state.revision { state.reset() }
        state.replace(with: snapshot, decode: decode)
        listing = nil
    }

    private func apply(_ message: WatchMessage, logger: Logger) -> Bool {
        switch message {
        case .created:
            watching = true
            failures = 0
            return true
        case .changes(let events):
            state.apply(events, decode: decode)
            listing = nil
            return true
        case .compacted(let revision):
            logger.info(
                "watch history compacted; listing again",
                metadata: ["prefix": "\(prefix)", "compacted": "\(revision)", "applied": "\(state.revision)"])
            return false
        case .canceled(let reason):
            logger.warning(
                "etcd canceled the watch; listing again", metadata: ["prefix": "\(prefix)", "reason": "\(reason)"])
            return false
        }
    }

    private func requestResync() { resync?.yield() }

    private func opened(_ continuation: AsyncStream<Void>.Continuation) { resync = continuation }

    private func closed() -> Int {
        watching = false
        resync = nil
        return failures
    }

    private func failed() { failures += 1 }

    /// Lists and watches the prefix until the task is cancelled.
    public nonisolated func follow(_ etcd: EtcdClient, logger: Logger) async {
        while !Task.isCancelled {
            let (signal, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
            do throws(CatalogError) {
                let snapshot = try await etcd.snapshot(prefix: prefix)
                await restart(from: snapshot)
                await opened(continuation)
                let ended = await withTaskGroup(of: Result<Void, CatalogError>?.self) { group in
                    group.addTask {
                        do throws(CatalogError) {
                            try await etcd.watch(prefix: self.prefix, from: snapshot.revision + 1) { message in
                                await self.apply(message, logger: logger)
                            }
                            return .success(())
                        } catch {
                            return .failure(error)
                        }
                    }
                    group.addTask {
                        for await _ in signal { return nil }
                        return nil
                    }
                    let first = await group.next() ?? nil
                    group.cancelAll()
                    return first
                }
                if case .failure(let error) = ended { throw error }
                if ended == nil, !Task.isCancelled {
                    logger.info("watch behind etcd; listing again", metadata: ["prefix": "\(prefix)"])
                }
            } catch {
                if !Task.isCancelled {
                    await failed()
                    logger.warning(
                        "watch of the catalog failed; listing again",
                        metadata: ["prefix": "\(prefix)", "error": "\(error)"])
                }
            }
            continuation.finish()
            let failures = await closed()
            if Task.isCancelled { break }
            try? await Task.sleep(for: MirrorBackoff.delay(afterFailures: failures))
        }
    }
}
