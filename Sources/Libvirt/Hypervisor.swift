import NIOConcurrencyHelpers
import NIOPosix

/// Async access to a libvirt daemon. Every call runs on a dedicated thread pool, never on
/// Swift's cooperative pool, because libvirt calls block for as long as the daemon takes
/// (a save blocks for seconds). The connection is reopened once when libvirtd restarted.
public final class Hypervisor: Sendable {
    public let uri: String
    private let threads: NIOThreadPool
    private let connection = NIOLockedValueBox<LibvirtConnection?>(nil)

    /// - Parameter threads: how many libvirt calls may block at once; parallel saves and
    ///   starts of a whole cluster need one each.
    public init(uri: String = "qemu:///system", threads: Int = 16) {
        self.uri = uri
        self.threads = NIOThreadPool(numberOfThreads: threads)
        self.threads.start()
    }

    public func shutdown() async throws { try await threads.shutdownGracefully() }

    /// Runs `body` with a live connection on a pool thread.
    public func run<T: Sendable>(_ body: @escaping @Sendable (LibvirtConnection) throws -> T) async throws -> T {
        try await threads.runIfActive { [uri, connection] () throws -> T in
            let conn = try Self.current(uri: uri, box: connection)
            do {
                return try body(conn)
            } catch let error as LibvirtError where error.isConnectionLost && !conn.isAlive {
                // libvirtd went away under us; one retry on a fresh connection.
                connection.withLockedValue { $0 = nil }
                return try body(try Self.current(uri: uri, box: connection))
            }
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
