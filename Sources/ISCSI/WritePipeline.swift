import CISCSI
import Glibc

/// libiscsi's asynchronous WRITE(16) loop behind `ISCSISession.copy`. It lives on the
/// session's thread: callbacks run inside `iscsi_service`, on the same thread.
final class WritePipeline {
    final class Slot {
        let buffer: UnsafeMutableRawBufferPointer
        var busy = false
        var length: UInt64 = 0
        unowned let pipeline: WritePipeline

        init(size: Int, pipeline: WritePipeline) {
            buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 4096)
            self.pipeline = pipeline
        }
    }

    private let context: OpaquePointer
    private let lun: Int32
    private let blockSize: UInt32
    private let chunkSize: Int
    private var slots: [Slot] = []
    fileprivate var failure: String?
    fileprivate var completed: UInt64 = 0

    init(context: OpaquePointer, lun: Int32, blockSize: UInt32, chunkSize: Int, depth: Int) {
        self.context = context
        self.lun = lun
        self.blockSize = blockSize
        // Whole blocks only: the last chunk is padded up to a block.
        self.chunkSize = max(Int(blockSize), chunkSize / Int(blockSize) * Int(blockSize))
        self.slots = []
        for _ in 0..<max(1, depth) { slots.append(Slot(size: self.chunkSize, pipeline: self)) }
    }

    func release() {
        for slot in slots { slot.buffer.deallocate() }
        slots = []
    }

    /// Copies, and on any failure cancels what is still in flight before returning, so
    /// that no completion callback can run after the slots' buffers are released.
    func run(fd: Int32, length: UInt64, progress: (UInt64) -> Void) throws(ISCSIError) -> UInt64 {
        do {
            return try pump(fd: fd, length: length, progress: progress)
        } catch {
            if slots.contains(where: \.busy) {
                // Runs every pending callback with SCSI_STATUS_CANCELLED, here and now.
                iscsi_scsi_cancel_all_tasks(context)
            }
            throw error
        }
    }

    private func pump(fd: Int32, length: UInt64, progress: (UInt64) -> Void) throws(ISCSIError) -> UInt64 {
        var offset: UInt64 = 0
        var sent: UInt64 = 0
        let bs = UInt64(blockSize)
        while true {
            while failure == nil, offset < length, let slot = slots.first(where: { !$0.busy }) {
                let want = min(UInt64(chunkSize), length - offset)
                try readFully(fd: fd, into: slot.buffer, count: Int(want), at: offset)
                let padded = (want + bs - 1) / bs * bs
                if padded > want {
                    memset(slot.buffer.baseAddress! + Int(want), 0, Int(padded - want))
                }
                if Self.isZero(UnsafeRawBufferPointer(rebasing: slot.buffer[0..<Int(padded)])) {
                    offset += want
                    completed += want
                    progress(completed)
                    continue
                }
                slot.busy = true
                slot.length = want
                let task = iscsi_write16_task(
                    context, lun, offset / bs, slot.buffer.baseAddress!.assumingMemoryBound(to: UInt8.self),
                    UInt32(padded), Int32(blockSize), 0, 0, 0, 0, 0, writeDone,
                    Unmanaged.passUnretained(slot).toOpaque())
                guard task != nil else {
                    slot.busy = false
                    throw ISCSIError(operation: "WRITE(16) at \(offset)", message: ISCSISession.message(context))
                }
                offset += want
                sent += padded
            }
            let inFlight = slots.contains { $0.busy }
            if !inFlight && (offset >= length || failure != nil) { break }

            var pfd = pollfd(
                fd: iscsi_get_fd(context), events: Int16(truncatingIfNeeded: iscsi_which_events(context)), revents: 0)
            let ready = poll(&pfd, 1, 1000)
            if ready < 0 && errno != EINTR {
                throw ISCSIError(operation: "poll", message: String(cString: strerror(errno)))
            }
            let before = completed
            guard iscsi_service(context, Int32(pfd.revents)) == 0 else {
                throw ISCSIError(operation: "iscsi_service", message: ISCSISession.message(context))
            }
            if completed != before { progress(completed) }
        }
        if let failure { throw ISCSIError(operation: "WRITE(16)", message: failure) }
        return sent
    }

    private func readFully(fd: Int32, into buffer: UnsafeMutableRawBufferPointer, count: Int, at offset: UInt64)
        throws(ISCSIError)
    {
        var done = 0
        while done < count {
            let n = pread(fd, buffer.baseAddress! + done, count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw ISCSIError(operation: "read source at \(offset)", message: String(cString: strerror(errno)))
            }
            if n == 0 { throw ISCSIError(operation: "read source at \(offset)", message: "the file ended early") }
            done += n
        }
    }

    private static func isZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let words = bytes.count / 8
        let w = bytes.baseAddress!.assumingMemoryBound(to: UInt64.self)
        for i in 0..<words where w[i] != 0 { return false }
        for i in (words * 8)..<bytes.count where bytes[i] != 0 { return false }
        return true
    }
}

/// Called by libiscsi inside `iscsi_service` when a WRITE(16) completes.
private let writeDone: iscsi_command_cb = { ctx, status, commandData, privateData in
    guard let privateData else { return }
    let slot = Unmanaged<WritePipeline.Slot>.fromOpaque(privateData).takeUnretainedValue()
    let cancelled = status == Int32(SCSI_STATUS_CANCELLED.rawValue)
    if status != Int32(SCSI_STATUS_GOOD.rawValue), !cancelled, slot.pipeline.failure == nil {
        slot.pipeline.failure = ctx.map { ISCSISession.message($0) } ?? "status \(status)"
    }
    slot.busy = false
    slot.pipeline.completed += slot.length
    if let task = commandData?.assumingMemoryBound(to: scsi_task.self) { scsi_free_scsi_task(task) }
}
