import NIOConcurrencyHelpers
import NIOPosix

/// Async access to a libvirt daemon. Every call runs on a dedicated thread pool, never on
/// Swift's cooperative pool, because libvirt calls block for as long as the daemon takes
/// (a save blocks for seconds). The connection is reopened once when libvirtd restarted.
///
/// Every call has a deadline. A libvirtd that hangs without dying would otherwise hold
/// the caller, and whatever lock it holds, forever; after the deadline the caller gets a
/// `LibvirtError` whose `isUnanswered` is true, while the blocked thread is left to the
/// connection's keepalive, which closes the connection and fails the call.
public final class Hypervisor: Sendable {
    public let uri: String
    /// How long a call may take when its caller names no other deadline.
    public let callTimeout: Duration
    private let threads: NIOThreadPool
    private let connection = NIOLockedValueBox<LibvirtConnection?>(nil)

    /// - Parameters:
    ///   - threads: how many libvirt calls may block at once; parallel saves and starts of
    ///     a whole cluster need one each.
    ///   - callTimeout: the default deadline of `run`; well above what a define, start or
    ///     lookup takes on a loaded node, well below a client's patience.
    public init(uri: String = "qemu:///system", threads: Int = 16, callTimeout: Duration = .seconds(60)) {
        self.uri = uri
        self.callTimeout = callTimeout
        self.threads = NIOThreadPool(numberOfThreads: threads)
        self.threads.start()
    }

    public func shutdown() async throws { try await threads.shutdownGracefully() }

    /// Runs `body` with a live connection on a pool thread.
    /// - Parameter timeout: how long to wait for `body`, `callTimeout` when nil; calls that
    ///   legitimately take long (saving or restoring a large VM) pass more.
    /// - Throws: what `body` throws, or a `LibvirtError` with `isUnanswered` when the
    ///   deadline passed first (`body` may still complete later).
    public func run<T: Sendable>(
        timeout: Duration? = nil, _ body: @escaping @Sendable (LibvirtConnection) throws -> T
    ) async throws -> T {
        let deadline = timeout ?? callTimeout
        let (uri, connection, threads) = (self.uri, self.connection, self.threads)
        return try await withCheckedThrowingContinuation { continuation in
            let call = PendingCall(continuation)
            let timer = Task {
                do { try await Task.sleep(for: deadline) } catch { return }
                call.finish(.failure(LibvirtError.unanswered(uri: uri, after: deadline)))
            }
            threads.submit { state in
                defer { timer.cancel() }
                guard state == .active else { return call.finish(.failure(CancellationError())) }
                // Queued behind calls blocked on a hung libvirtd until its caller gave up:
                // not made at all, so it cannot take effect long after it was reported failed.
                guard call.isWaiting else { return }
                call.finish(Result { try Self.call(uri: uri, box: connection, retry: { call.isWaiting }, body) })
            }
        }
    }

    /// - Parameter retry: whether a retry is still wanted; not once the caller gave up,
    ///   since opening a connection to a hung libvirtd blocks with no keepalive to end it.
    private static func call<T>(
        uri: String, box: NIOLockedValueBox<LibvirtConnection?>, retry: () -> Bool,
        _ body: (LibvirtConnection) throws -> T
    ) throws -> T {
        let conn = try current(uri: uri, box: box)
        do {
            return try body(conn)
        } catch let error as LibvirtError where error.isConnectionLost && !conn.isAlive && retry() {
            // libvirtd went away under us (restarted, or its keepalives failed); one retry
            // on a fresh connection, unless another thread made one already.
            box.withLockedValue { if $0 === conn { $0 = nil } }
            return try body(try current(uri: uri, box: box))
        }
    }

    private static func current(uri: String, box: NIOLockedValueBox<LibvirtConnection?>) throws(LibvirtError)
        -> LibvirtConnection
    {
        let existing = box.withLockedValue { $0 }
        if let existing, existing.isAlive { return existing }
        let fresh = try LibvirtConnection(uri: uri)
        box.withLockedValue { $0 = fresh }
        return fresh
    }
}

/// One caller waiting for one call: whichever of the call and its deadline comes first
/// resumes it, the other finds nobody waiting.
private final class PendingCall<T: Sendable>: Sendable {
    private let waiter: NIOLockedValueBox<CheckedContinuation<T, any Error>?>

    init(_ continuation: CheckedContinuation<T, any Error>) { waiter = NIOLockedValueBox(continuation) }

    var isWaiting: Bool { waiter.withLockedValue { $0 != nil } }

    func finish(_ result: Result<T, any Error>) {
        let taken = waiter.withLockedValue { waiting in
            defer { waiting = nil }
            return waiting
        }
        taken?.resume(with: result)
    }
}
