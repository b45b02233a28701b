// Libvirt: the only importer of CLibvirt. Owns libvirt handles and turns libvirt's
// thread-local error into a typed Swift error. It makes no decision about what to define.
import CLibvirt

/// A libvirt call that failed, with libvirt's own message.
public struct LibvirtError: Error, Sendable, CustomStringConvertible {
    /// The call that failed, e.g. `virDomainCreate`.
    public var operation: String
    /// libvirt's `virErrorNumber`, e.g. 42 for VIR_ERR_NO_DOMAIN.
    public var code: Int32
    /// libvirt's `virErrorDomain` (which part of libvirt raised it).
    public var domain: Int32
    public var message: String

    public var description: String { "\(operation): \(message)" }

    public var isNoDomain: Bool { code == Int32(VIR_ERR_NO_DOMAIN.rawValue) }
    /// The connection to libvirtd broke (libvirtd restarted or stopped).
    public var isConnectionLost: Bool {
        code == Int32(VIR_ERR_SYSTEM_ERROR.rawValue) || code == Int32(VIR_ERR_RPC.rawValue)
            || code == Int32(VIR_ERR_NO_CONNECT.rawValue) || code == Int32(VIR_ERR_INVALID_CONN.rawValue)
    }

    /// Reads libvirt's last error on this thread. Call it on the thread of the failed call.
    static func last(_ operation: String) -> LibvirtError {
        guard let err = virGetLastError() else {
            return LibvirtError(operation: operation, code: -1, domain: -1, message: "unknown libvirt error")
        }
        let message = err.pointee.message.map { String(cString: $0) } ?? "unknown libvirt error"
        let e = LibvirtError(operation: operation, code: err.pointee.code, domain: err.pointee.domain, message: message)
        virResetLastError()
        return e
    }
}
