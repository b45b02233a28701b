import NIOPosix

/// Runs libiscsi sessions on threads of their own: each `withSession` call logs in, runs
/// its body and logs out on one pool thread, so no context is ever shared.
public final class ISCSIClient: Sendable {
    public let initiator: String
    private let threads: NIOThreadPool

    public init(initiator: String, threads: Int = 8) {
        self.initiator = initiator
        self.threads = NIOThreadPool(numberOfThreads: threads)
        self.threads.start()
    }

    public func shutdown() async throws { try await threads.shutdownGracefully() }

    public func withSession<T: Sendable>(
        _ target: ISCSITarget, chap: CHAPCredentials? = nil, initiator: String? = nil,
        _ body: @escaping @Sendable (ISCSISession) throws -> T
    ) async throws -> T {
        let name = initiator ?? self.initiator
        return try await threads.runIfActive {
            let session = try ISCSISession(initiator: name, target: target, chap: chap)
            return try body(session)
        }
    }

    /// The checks a disk must pass before a VM may boot from it: it answers TEST UNIT
    /// READY, INQUIRY says it is a connected direct-access device, and READ CAPACITY gives
    /// the size we exported.
    public func verifyDisk(
        _ target: ISCSITarget, expectedBytes: UInt64, chap: CHAPCredentials? = nil, initiator: String? = nil
    ) async throws -> Capacity {
        try await withSession(target, chap: chap, initiator: initiator) { session in
            try session.testUnitReady()
            let inquiry = try session.inquiry()
            guard inquiry.qualifier == 0, inquiry.deviceType == 0 else {
                throw ISCSIError(
                    operation: "INQUIRY on \(target)",
                    message: "device type \(inquiry.deviceType), qualifier \(inquiry.qualifier): not a connected disk")
            }
            let capacity = try session.readCapacity()
            guard capacity.bytes == expectedBytes else {
                throw ISCSIError(
                    operation: "READ CAPACITY on \(target)",
                    message: "the LUN has \(capacity.bytes) bytes, the disk file \(expectedBytes)")
            }
            return capacity
        }
    }
}
