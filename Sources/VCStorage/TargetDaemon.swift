import CLinux
import Glibc
import NIOCore
import NIOPosix

/// A client of tgtd's management socket: the requests `tgtadm` sends, made without a
/// process per request and without a CHAP password in any process's command line.
///
/// Each request opens the socket, writes, reads the whole answer and closes, as tgtadm
/// does (tgtd closes its side after every answer anyway). The I/O runs on NIO's event
/// loops, never blocking a thread, and each request is bounded by `timeout`, so a hung
/// tgtd costs a caller at most that long.
public struct TargetDaemon: Sendable {
    /// tgtd's management port (`tgtd -C`, `tgtadm -C`); 0 for tgtd's default.
    public let controlPort: Int
    /// The Unix socket tgtd listens on for that port.
    public let socketPath: String
    /// From connect to the last byte of the answer.
    public let timeout: Duration
    private let group: any EventLoopGroup

    public init(controlPort: Int = 0, timeout: Duration = .seconds(30)) {
        self.controlPort = controlPort
        self.timeout = timeout
        self.socketPath = Self.socketPath(
            controlPort: controlPort, namespace: getenv("TGT_IPC_SOCKET").map { String(cString: $0) })
        self.group = MultiThreadedEventLoopGroup.singleton
    }

    /// tgtd and tgtadm both let `$TGT_IPC_SOCKET` replace the default namespace.
    static func socketPath(controlPort: Int, namespace: String?) -> String {
        "\(namespace ?? PEERLESS_TGT_IPC_NAMESPACE).\(controlPort)"
    }

    /// Sends `request` and returns tgtd's text (empty for most changes). `subject`, when
    /// given, names what the request is about in errors instead of the request's own
    /// wording (an IQN instead of a tid).
    @discardableResult
    public func send(_ request: Request, about subject: String? = nil) async throws(StorageError) -> String {
        let subject = subject ?? request.subject
        let bytes = try request.encoded(subject: subject)
        let started = ContinuousClock.now
        let answer = try await exchange(bytes)
        guard let response = Response(complete: answer) else {
            if Task.isCancelled {
                throw .targetFailed(iqn: subject, operation: request.action, reason: "cancelled before tgtd answered")
            }
            if ContinuousClock.now - started >= timeout {
                throw .targetDaemon(reason: "tgtd did not answer on \(socketPath) within \(timeout)")
            }
            // tgtd drops a connection without a word when the peer is not its own user and
            // group (mgmt.c, ipc_perm), or when it is going away.
            throw .targetDaemon(
                reason: answer.isEmpty
                    ? "tgtd closed \(socketPath) without answering (is this process tgtd's user and group?)"
                    : "tgtd sent \(answer.count) bytes on \(socketPath), not a whole answer")
        }
        guard response.status == 0 else {
            throw .targetRefused(subject: subject, action: request.action, refusal: Refusal(code: response.status))
        }
        return response.text
    }

    private func exchange(_ request: [UInt8]) async throws(StorageError) -> [UInt8] {
        let deadline = NIODeadline.now() + TimeAmount(timeout)
        let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>
        do {
            channel = try await connect(deadline: deadline)
        } catch {
            throw .targetDaemon(reason: "cannot connect to \(socketPath): \(Self.describe(error))")
        }
        // Closing the channel at the deadline ends the inbound stream, whatever tgtd does.
        let timer = channel.channel.eventLoop.scheduleTask(deadline: deadline) { [c = channel.channel] in
            c.close(promise: nil)
        }
        defer { timer.cancel() }
        do {
            return try await channel.executeThenClose { inbound, outbound in
                try await outbound.write(ByteBuffer(bytes: request))
                var answer: [UInt8] = []
                for try await chunk in inbound {
                    answer.append(contentsOf: chunk.readableBytesView)
                    if let length = Response.length(of: answer), answer.count >= length { break }
                }
                return answer
            }
        } catch {
            // A connection closed under us (the deadline, tgtd exiting) reads as a short
            // answer; `send` says which.
            return []
        }
    }

    private func connect(deadline: NIODeadline) async throws -> NIOAsyncChannel<ByteBuffer, ByteBuffer> {
        while true {
            do {
                return try await ClientBootstrap(group: group)
                    .connectTimeout(deadline - NIODeadline.now())
                    .connect(unixDomainSocketPath: socketPath) { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                        }
                    }
            } catch let error as IOError where error.errnoCode == EAGAIN && NIODeadline.now() < deadline {
                // A Unix socket whose listen backlog (32 in tgtd) is full refuses a
                // non-blocking connect with EAGAIN instead of queueing it.
                try await Task.sleep(for: .milliseconds(1))
            }
        }
    }

    private static func describe(_ error: any Error) -> String {
        if let error = error as? IOError { return String(cString: strerror(error.errnoCode)) }
        return "\(error)"
    }
}

extension TargetDaemon {
    /// What a request is about (tgtadm's `--mode`).
    public enum Mode: Sendable, Equatable {
        case system, target, logicalUnit, portal, driver, session, connection, account

        var wire: UInt32 {
            switch self {
            case .system: PEERLESS_MODE_SYSTEM.rawValue
            case .target: PEERLESS_MODE_TARGET.rawValue
            case .logicalUnit: PEERLESS_MODE_DEVICE.rawValue
            case .portal: PEERLESS_MODE_PORTAL.rawValue
            case .driver: PEERLESS_MODE_LLD.rawValue
            case .session: PEERLESS_MODE_SESSION.rawValue
            case .connection: PEERLESS_MODE_CONNECTION.rawValue
            case .account: PEERLESS_MODE_ACCOUNT.rawValue
            }
        }
    }

    /// tgtadm's `--op`.
    public enum Operation: Sendable, Equatable {
        case new, delete, show, bind, unbind, update, stats, start, stop

        var wire: UInt32 {
            switch self {
            case .new: PEERLESS_OP_NEW.rawValue
            case .delete: PEERLESS_OP_DELETE.rawValue
            case .show: PEERLESS_OP_SHOW.rawValue
            case .bind: PEERLESS_OP_BIND.rawValue
            case .unbind: PEERLESS_OP_UNBIND.rawValue
            case .update: PEERLESS_OP_UPDATE.rawValue
            case .stats: PEERLESS_OP_STATS.rawValue
            case .start: PEERLESS_OP_START.rawValue
            case .stop: PEERLESS_OP_STOP.rawValue
            }
        }
    }

    public struct Parameter: Sendable, Equatable {
        public var key: String
        public var value: String
        /// Kept out of `description` and error messages.
        public var isSecret: Bool
        /// tgtd takes everything after `key=` (an account's password), so the value may hold
        /// commas; it must be the request's last parameter. Every other value is split at
        /// commas by tgtd.
        public var takesRest: Bool

        public init(_ key: String, _ value: String, isSecret: Bool = false, takesRest: Bool = false) {
            self.key = key
            self.value = value
            self.isSecret = isSecret
            self.takesRest = takesRest
        }
    }

    /// One management request, with the defaults tgtadm sends for what it is not told.
    public struct Request: Sendable, Equatable, CustomStringConvertible {
        public var mode: Mode
        public var operation: Operation
        /// The low-level driver (`--lld`); tgtd takes its first driver when empty.
        public var driver = "iscsi"
        /// -1: none (a listing of every target).
        public var tid: Int32 = -1
        /// `UInt64.max`: none.
        public var lun: UInt64 = .max
        public var force = false
        /// A session's id (tgtadm's `--sid`, the session's TSIH) and a connection's id in it
        /// (`--cid`): what closing one connection names.
        public var sid: UInt64 = 0
        public var cid: UInt32 = 0
        /// In the order tgtadm writes them: tgtd finds some by position (an account's
        /// password is whatever follows the first comma after `user=`).
        public var parameters: [Parameter] = []
        /// For errors: what the request does to `subject` ("bind initiator X to").
        public var action: String
        /// For errors: what it is about ("target 3", "CHAP account u").
        public var subject: String

        public init(
            mode: Mode, operation: Operation, tid: Int32 = -1, lun: UInt64 = .max, force: Bool = false,
            parameters: [Parameter] = [], action: String, subject: String
        ) {
            self.mode = mode
            self.operation = operation
            self.tid = tid
            self.lun = lun
            self.force = force
            self.parameters = parameters
            self.action = action
            self.subject = subject
        }

        public var description: String {
            let text = parameters.map { "\($0.key)=\($0.isSecret ? "***" : $0.value)" }.joined(separator: ",")
            return
                "\(operation) \(mode) tid=\(tid)\(lun == .max ? "" : " lun=\(lun)")\(force ? " force" : "") [\(text)]"
        }

        /// The bytes tgtd reads: the header, then the parameters and a NUL.
        public func encoded() throws(StorageError) -> [UInt8] { try encoded(subject: subject) }

        func encoded(subject: String) throws(StorageError) -> [UInt8] {
            var text: [UInt8] = []
            for (index, parameter) in parameters.enumerated() {
                if parameter.value.utf8.contains(0) || parameter.key.utf8.contains(0) {
                    throw .targetFailed(iqn: subject, operation: action, reason: "\(parameter.key) contains a NUL byte")
                }
                let commaAllowed = parameter.takesRest && index == parameters.count - 1
                if !commaAllowed, parameter.value.utf8.contains(UInt8(ascii: ",")) {
                    throw .targetFailed(
                        iqn: subject, operation: action,
                        reason: "\(parameter.key) contains a comma, which tgtd takes for the end of the value")
                }
                if index > 0 { text.append(UInt8(ascii: ",")) }
                text.append(contentsOf: parameter.key.utf8)
                text.append(UInt8(ascii: "="))
                text.append(contentsOf: parameter.value.utf8)
            }
            if !text.isEmpty { text.append(0) }
            guard text.count <= Int(PEERLESS_TGT_MAX_PARAMETER_BYTES) else {
                throw .targetFailed(
                    iqn: subject, operation: action,
                    reason: "the request's parameters exceed tgtd's \(PEERLESS_TGT_MAX_PARAMETER_BYTES) bytes")
            }
            let name = Array(driver.utf8)
            guard name.count < Int(PEERLESS_TGT_LLD_NAME_LEN), !name.contains(0) else {
                throw .targetFailed(iqn: subject, operation: action, reason: "driver name \(driver) is not valid")
            }
            var header = peerless_tgtadm_req()
            header.mode = mode.wire
            header.op = operation.wire
            withUnsafeMutableBytes(of: &header.lld) { lld in
                for (i, byte) in name.enumerated() { lld[i] = byte }
            }
            header.len = UInt32(MemoryLayout<peerless_tgtadm_req>.size + text.count)
            header.tid = tid
            header.lun = lun
            header.sid = sid
            header.cid = cid
            header.device_type = UInt32(PEERLESS_TGT_TYPE_DISK)
            // Accounts are only ever the initiator's (CHAP one way), never the target's own.
            header.ac_dir = PEERLESS_ACCOUNT_TYPE_INCOMING.rawValue
            header.force = force ? 1 : 0
            return withUnsafeBytes(of: header) { Array($0) } + text
        }
    }

    /// tgtd's answer: a status (0 or a tgtadm_errno) and text.
    public struct Response: Sendable, Equatable {
        public var status: UInt32
        public var text: String

        public init(status: UInt32, text: String) {
            self.status = status
            self.text = text
        }

        /// The length the header announces, or nil until the header is in.
        static func length(of bytes: [UInt8]) -> Int? {
            header(of: bytes).map { Int($0.len) }
        }

        private static func header(of bytes: [UInt8]) -> peerless_tgtadm_rsp? {
            let size = MemoryLayout<peerless_tgtadm_rsp>.size
            guard bytes.count >= size else { return nil }
            var header = peerless_tgtadm_rsp()
            withUnsafeMutableBytes(of: &header) { $0.copyBytes(from: bytes[0..<size]) }
            return header
        }

        /// Decodes a whole answer; nil when `bytes` is shorter than its header says, or
        /// the header is not tgtd's.
        public init?(complete bytes: [UInt8]) {
            let size = MemoryLayout<peerless_tgtadm_rsp>.size
            guard let header = Self.header(of: bytes), Int(header.len) >= size, bytes.count >= Int(header.len)
            else { return nil }
            var body = bytes[size..<Int(header.len)]
            // The text is a C string: its NUL is counted in the length.
            while body.last == 0 { body = body.dropLast() }
            self.init(status: header.err, text: String(decoding: body, as: UTF8.self))
        }

        /// The bytes tgtd would send; for tests.
        static func encode(status: UInt32, text: String) -> [UInt8] {
            let body = text.isEmpty ? [] : Array(text.utf8) + [0]
            var header = peerless_tgtadm_rsp()
            header.err = status
            header.len = UInt32(MemoryLayout<peerless_tgtadm_rsp>.size + body.count)
            return withUnsafeBytes(of: header) { Array($0) } + body
        }
    }

    /// A tgtadm_errno with tgtadm's message for it (tgtadm.c, tgtadm_strerror).
    public struct Refusal: Hashable, Sendable, CustomStringConvertible {
        public let code: UInt32

        public init(code: UInt32) { self.code = code }

        public static let noTarget = Refusal(code: PEERLESS_TGTADM_NO_TARGET.rawValue)
        public static let noLogicalUnit = Refusal(code: PEERLESS_TGTADM_NO_LUN.rawValue)
        public static let targetExists = Refusal(code: PEERLESS_TGTADM_TARGET_EXIST.rawValue)
        public static let ruleExists = Refusal(code: PEERLESS_TGTADM_ACL_EXIST.rawValue)
        public static let noRule = Refusal(code: PEERLESS_TGTADM_ACL_NOEXIST.rawValue)
        public static let accountExists = Refusal(code: PEERLESS_TGTADM_USER_EXIST.rawValue)
        public static let noAccount = Refusal(code: PEERLESS_TGTADM_NO_USER.rawValue)
        public static let noSession = Refusal(code: PEERLESS_TGTADM_NO_SESSION.rawValue)
        public static let noConnection = Refusal(code: PEERLESS_TGTADM_NO_CONNECTION.rawValue)

        private static let messages: [UInt32: String] = [
            PEERLESS_TGTADM_SUCCESS.rawValue: "success",
            PEERLESS_TGTADM_UNKNOWN_ERR.rawValue: "unknown error",
            PEERLESS_TGTADM_NOMEM.rawValue: "out of memory",
            PEERLESS_TGTADM_NO_DRIVER.rawValue: "can't find the driver",
            PEERLESS_TGTADM_NO_TARGET.rawValue: "can't find the target",
            PEERLESS_TGTADM_NO_LUN.rawValue: "can't find the logical unit",
            PEERLESS_TGTADM_NO_SESSION.rawValue: "can't find the session",
            PEERLESS_TGTADM_NO_CONNECTION.rawValue: "can't find the connection",
            PEERLESS_TGTADM_NO_BINDING.rawValue: "can't find the binding",
            PEERLESS_TGTADM_TARGET_EXIST.rawValue: "this target already exists",
            PEERLESS_TGTADM_BINDING_EXIST.rawValue: "this binding already exists",
            PEERLESS_TGTADM_LUN_EXIST.rawValue: "this logical unit number already exists",
            PEERLESS_TGTADM_ACL_EXIST.rawValue: "this access control rule already exists",
            PEERLESS_TGTADM_ACL_NOEXIST.rawValue: "this access control rule does not exist",
            PEERLESS_TGTADM_USER_EXIST.rawValue: "this account already exists",
            PEERLESS_TGTADM_NO_USER.rawValue: "can't find the account",
            PEERLESS_TGTADM_TOO_MANY_USER.rawValue: "too many accounts",
            PEERLESS_TGTADM_INVALID_REQUEST.rawValue: "invalid request",
            PEERLESS_TGTADM_OUTACCOUNT_EXIST.rawValue: "this target already has an outgoing account",
            PEERLESS_TGTADM_TARGET_ACTIVE.rawValue: "this target is still active",
            PEERLESS_TGTADM_LUN_ACTIVE.rawValue: "this logical unit is still active",
            PEERLESS_TGTADM_DRIVER_ACTIVE.rawValue: "this driver is busy",
            PEERLESS_TGTADM_UNSUPPORTED_OPERATION.rawValue: "this operation isn't supported",
            PEERLESS_TGTADM_UNKNOWN_PARAM.rawValue: "unknown parameter",
            PEERLESS_TGTADM_PREVENT_REMOVAL.rawValue: "this device has Prevent Removal set",
        ]

        /// tgtadm's words for it, which is what tgtadm would have printed.
        public var message: String { Self.messages[code] ?? "(unknown tgtadm_errno)" }
        public var description: String { message }
    }
}

extension TargetDaemon.Request {
    public static func showTargets() -> Self {
        Self(mode: .target, operation: .show, action: "list", subject: "the targets")
    }

    public static func newTarget(tid: Int, name: String) -> Self {
        Self(
            mode: .target, operation: .new, tid: Int32(clamping: tid), parameters: [.init("targetname", name)],
            action: "create", subject: "iSCSI target \(name)")
    }

    /// With `force`, tgtd drops the target's sessions instead of refusing.
    public static func deleteTarget(tid: Int, force: Bool = true) -> Self {
        Self(
            mode: .target, operation: .delete, tid: Int32(clamping: tid), force: force, action: "delete",
            subject: "target \(tid)")
    }

    public static func newLogicalUnit(tid: Int, lun: UInt64, path: String) -> Self {
        Self(
            mode: .logicalUnit, operation: .new, tid: Int32(clamping: tid), lun: lun, parameters: [.init("path", path)],
            action: "add LUN \(lun) to", subject: "target \(tid)")
    }

    /// Sets a target parameter (an iSCSI session parameter such as MaxBurstLength).
    public static func updateTarget(tid: Int, name: String, value: String) -> Self {
        Self(
            mode: .target, operation: .update, tid: Int32(clamping: tid), parameters: [.init(name, value)],
            action: "set \(name) on", subject: "target \(tid)")
    }

    public static func bindInitiator(tid: Int, name: String) -> Self {
        Self(
            mode: .target, operation: .bind, tid: Int32(clamping: tid), parameters: [.init("initiator-name", name)],
            action: "bind initiator \(name) to", subject: "target \(tid)")
    }

    public static func unbindInitiator(tid: Int, name: String) -> Self {
        Self(
            mode: .target, operation: .unbind, tid: Int32(clamping: tid), parameters: [.init("initiator-name", name)],
            action: "unbind initiator \(name) from", subject: "target \(tid)")
    }

    /// The target's connections: "Session: S", "Connection: C", "Initiator: NAME" lines.
    public static func showConnections(tid: Int) -> Self {
        Self(
            mode: .connection, operation: .show, tid: Int32(clamping: tid), action: "list the connections of",
            subject: "target \(tid)")
    }

    /// Closes one connection; tgtd frees the session when its last connection goes.
    public static func deleteConnection(tid: Int, session: UInt64, connection: UInt32) -> Self {
        var request = Self(
            mode: .connection, operation: .delete, tid: Int32(clamping: tid),
            action: "close connection \(connection) of session \(session) of", subject: "target \(tid)")
        request.sid = session
        request.cid = connection
        return request
    }

    public static func showAccounts() -> Self {
        Self(mode: .account, operation: .show, action: "list", subject: "the CHAP accounts")
    }

    public static func newAccount(user: String, password: String) -> Self {
        Self(
            mode: .account, operation: .new,
            parameters: [.init("user", user), .init("password", password, isSecret: true, takesRest: true)],
            action: "create", subject: "CHAP account \(user)")
    }

    /// tgtd unbinds the account from every target first.
    public static func deleteAccount(user: String) -> Self {
        Self(
            mode: .account, operation: .delete, parameters: [.init("user", user)], action: "delete",
            subject: "CHAP account \(user)")
    }

    /// Binds an incoming account: logging in to the target then needs its CHAP secret.
    public static func bindAccount(tid: Int, user: String) -> Self {
        Self(
            mode: .account, operation: .bind, tid: Int32(clamping: tid), parameters: [.init("user", user)],
            action: "bind CHAP account \(user) to", subject: "target \(tid)")
    }

    public static func unbindAccount(tid: Int, user: String) -> Self {
        Self(
            mode: .account, operation: .unbind, tid: Int32(clamping: tid), parameters: [.init("user", user)],
            action: "unbind CHAP account \(user) from", subject: "target \(tid)")
    }

    public static func showPortals() -> Self {
        Self(mode: .portal, operation: .show, action: "list", subject: "the portals")
    }
}
