import CISCSI
import Glibc

/// A logged-in iSCSI session to one LUN. Not Sendable: libiscsi contexts are not
/// thread-safe, so a session lives and dies on the thread that made it.
public final class ISCSISession {
    private let context: OpaquePointer
    public let target: ISCSITarget
    private var lun: Int32 { Int32(target.lun) }
    /// libiscsi's timeout for logins and synchronous commands.
    public static let commandTimeoutSeconds = 30

    /// Connects and logs in. Fails with the target's reason, e.g. an initiator name that
    /// the target's ACL does not list ("Target not found").
    public init(initiator: String, target: ISCSITarget, chap: CHAPCredentials? = nil) throws(ISCSIError) {
        // The context is stored only once it is logged in: a class whose init throws after
        // every stored property is set runs its deinit, so destroying a failed context here
        // and then again in deinit freed it twice. Now deinit is its only destroyer.
        self.context = try Self.connect(initiator: initiator, target: target, chap: chap)
        self.target = target
    }

    /// A context logged in to `target`, or the target's reason; a failed context is freed.
    private static func connect(initiator: String, target: ISCSITarget, chap: CHAPCredentials?) throws(ISCSIError)
        -> OpaquePointer
    {
        guard let ctx = iscsi_create_context(initiator) else {
            throw ISCSIError(operation: "iscsi_create_context", message: "out of memory")
        }
        iscsi_set_targetname(ctx, target.iqn)
        iscsi_set_session_type(ctx, ISCSI_SESSION_NORMAL)
        iscsi_set_header_digest(ctx, ISCSI_HEADER_DIGEST_NONE_CRC32C)
        // A target that accepts the connection and then hangs must not hold this thread
        // (and the operation waiting on it) forever.
        iscsi_set_timeout(ctx, Int32(Self.commandTimeoutSeconds))
        if let chap {
            iscsi_set_initiator_username_pwd(ctx, chap.user, chap.password)
        }
        guard iscsi_full_connect_sync(ctx, target.portal, Int32(target.lun)) == 0 else {
            let e = ISCSIError(operation: "login to \(target)", message: Self.message(ctx))
            iscsi_destroy_context(ctx)
            throw e
        }
        return ctx
    }

    deinit {
        iscsi_logout_sync(context)
        iscsi_destroy_context(context)
    }

    /// TEST UNIT READY, retried past the UNIT ATTENTION a fresh LUN reports once.
    public func testUnitReady() throws(ISCSIError) {
        var lastError: ISCSIError?
        for _ in 0..<4 {
            do {
                let task = try command("TEST UNIT READY") { iscsi_testunitready_sync(context, lun) }
                scsi_free_scsi_task(task)
                return
            } catch {
                lastError = error
            }
        }
        throw lastError!
    }

    public func inquiry() throws(ISCSIError) -> Inquiry {
        let task = try command("INQUIRY") { iscsi_inquiry_sync(context, lun, 0, 0, 255) }
        defer { scsi_free_scsi_task(task) }
        var raw = peerless_inquiry()
        guard peerless_unmarshall_inquiry(task, &raw) == 0 else {
            throw ISCSIError(operation: "INQUIRY", message: "the answer could not be decoded")
        }
        func text<T>(_ tuple: T) -> String {
            withUnsafeBytes(of: tuple) { bytes in
                String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self).trimmingCharacters(in: " ")
            }
        }
        return Inquiry(
            deviceType: Int(raw.device_type), qualifier: Int(raw.qualifier), vendor: text(raw.vendor),
            product: text(raw.product), revision: text(raw.revision))
    }

    public func readCapacity() throws(ISCSIError) -> Capacity {
        let task = try command("READ CAPACITY(16)") { iscsi_readcapacity16_sync(context, lun) }
        defer { scsi_free_scsi_task(task) }
        var lastLBA: UInt64 = 0
        var blockSize: UInt32 = 0
        guard peerless_unmarshall_readcapacity16(task, &lastLBA, &blockSize) == 0 else {
            throw ISCSIError(operation: "READ CAPACITY(16)", message: "the answer could not be decoded")
        }
        return Capacity(blockSize: blockSize, blocks: lastLBA + 1)
    }

    /// Reads `blocks` blocks from `lba`.
    public func read(lba: UInt64, blocks: UInt32, blockSize: UInt32) throws(ISCSIError) -> [UInt8] {
        let length = blocks * blockSize
        let task = try command("READ(16) at \(lba)") {
            iscsi_read16_sync(context, lun, lba, length, Int32(blockSize), 0, 0, 0, 0, 0)
        }
        defer { scsi_free_scsi_task(task) }
        var data: UnsafePointer<UInt8>?
        let n = Int(peerless_task_datain(task, &data))
        guard let data, n > 0 else { return [] }
        return Array(UnsafeBufferPointer(start: data, count: n))
    }

    /// Writes whole blocks at `lba`.
    public func write(lba: UInt64, bytes: [UInt8], blockSize: UInt32) throws(ISCSIError) {
        var copy = bytes
        let task = try copy.withUnsafeMutableBufferPointer {
            (buf) throws(ISCSIError) -> UnsafeMutablePointer<scsi_task> in
            try command("WRITE(16) at \(lba)") {
                iscsi_write16_sync(
                    context, lun, lba, buf.baseAddress, UInt32(buf.count), Int32(blockSize), 0, 0, 0, 0, 0)
            }
        }
        scsi_free_scsi_task(task)
    }

    /// Copies `length` bytes of an open file to the LUN from block 0, keeping up to
    /// `depth` WRITE(16) commands in flight so that the copy is not bound by round trips.
    /// Chunks that are all zeros are skipped: the LUN is expected to be freshly created
    /// (and therefore zero), and skipping keeps the image sparse.
    /// - Returns: the number of bytes actually sent.
    public func copy(
        fromFile fd: Int32, length: UInt64, blockSize: UInt32, chunkSize: Int = 1 << 20, depth: Int = 16,
        progress: (UInt64) -> Void
    ) throws(ISCSIError) -> UInt64 {
        let pipeline = WritePipeline(
            context: context, lun: lun, blockSize: blockSize, chunkSize: chunkSize, depth: depth)
        defer { pipeline.release() }
        return try pipeline.run(fd: fd, length: length, progress: progress)
    }

    private func command(_ name: String, _ call: () -> UnsafeMutablePointer<scsi_task>?) throws(ISCSIError)
        -> UnsafeMutablePointer<scsi_task>
    {
        guard let task = call() else { throw ISCSIError(operation: name, message: Self.message(context)) }
        let status = peerless_task_status(task)
        guard status == Int32(SCSI_STATUS_GOOD.rawValue) else {
            let sense = peerless_task_sense_key(task)
            var message = Self.message(context)
            if message.isEmpty { message = "SCSI status \(status), sense key \(sense)" }
            scsi_free_scsi_task(task)
            throw ISCSIError(operation: name, message: message)
        }
        return task
    }

    static func message(_ ctx: OpaquePointer) -> String {
        iscsi_get_error(ctx).map { String(cString: $0) } ?? "unknown libiscsi error"
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: Character) -> String {
        var s = Substring(self)
        while s.last == set { s.removeLast() }
        while s.first == set { s.removeFirst() }
        return String(s)
    }
}
