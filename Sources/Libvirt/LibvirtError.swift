// Libvirt: the only importer of CLibvirt. Owns libvirt handles and turns libvirt's
// thread-local error into a typed Swift error. It makes no decision about what to define.
import CLibvirt

/// A libvirt call that failed, with libvirt's own message, or a libvirtd that did not
/// answer in time.
public struct LibvirtError: Error, Sendable, CustomStringConvertible {
    /// The call that failed, e.g. `virDomainCreate`.
    public var operation: String
    /// libvirt's `virErrorNumber`, e.g. 42 for VIR_ERR_NO_DOMAIN; -1 when libvirt said nothing.
    public var code: Int32
    /// libvirt's `virErrorDomain` (which part of libvirt raised it).
    public var domain: Int32
    public var message: String
    /// Set when the caller stopped waiting for libvirtd after this long: libvirt reported
    /// nothing, and the call may still complete on its thread.
    public var deadline: Duration?

    public var description: String { "\(operation): \(message)" }

    public var isNoDomain: Bool { code == Int32(VIR_ERR_NO_DOMAIN.rawValue) }
    public var isNoSecret: Bool { code == Int32(VIR_ERR_NO_SECRET.rawValue) }
    /// libvirtd did not answer within `deadline` (it hangs, or is overloaded).
    public var isUnanswered: Bool { deadline != nil }

    /// The connection to libvirtd broke (libvirtd restarted, stopped, or missed its
    /// keepalives). Those errors come from libvirt's RPC client; a system error raised by
    /// a driver inside libvirtd (a file it cannot create, say) is not one of them.
    public var isConnectionLost: Bool {
        domain == Int32(VIR_FROM_RPC.rawValue) || code == Int32(VIR_ERR_RPC.rawValue)
            || code == Int32(VIR_ERR_NO_CONNECT.rawValue) || code == Int32(VIR_ERR_INVALID_CONN.rawValue)
    }

    /// Reads libvirt's last error on this thread. Call it on the thread of the failed call,
    /// before any other libvirt call: every public libvirt function (even `virDomainGetName`)
    /// resets that error. `operation` is therefore only evaluated once the error is copied.
    static func last(_ operation: @autoclosure () -> String) -> LibvirtError {
        guard let err = virGetLastError() else {
            return LibvirtError(operation: operation(), code: -1, domain: -1, message: "unknown libvirt error")
        }
        let message = err.pointee.message.map { String(cString: $0) } ?? "unknown libvirt error"
        let (code, domain) = (err.pointee.code, err.pointee.domain)
        virResetLastError()
        return LibvirtError(operation: operation(), code: code, domain: domain, message: message)
    }

    /// The caller of a call to `uri` gave up after `deadline`.
    static func unanswered(uri: String, after deadline: Duration) -> LibvirtError {
        let (seconds, attoseconds) = deadline.components
        let within = attoseconds == 0 ? "\(seconds) s" : "\(seconds * 1000 + attoseconds / 1_000_000_000_000_000) ms"
        return LibvirtError(
            operation: "libvirt call", code: -1, domain: -1, message: "no answer from \(uri) within \(within)",
            deadline: deadline)
    }
}
