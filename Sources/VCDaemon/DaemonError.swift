import ISCSI
import Libvirt
import VCCatalog
import VCHost
import VCModel
import VCNetwork
import VCStorage

/// A request vcd could not satisfy, classified for the API: each kind maps to one HTTP
/// status and one stable code, and carries a one-line message for a person.
public enum DaemonError: Error, Sendable, CustomStringConvertible {
    /// Bad input: fix the request.
    case invalid(String)
    case notFound(String)
    /// The object exists already or is busy.
    case conflict(String)
    /// A daemon that vcd depends on (etcd, libvirtd, tgtd) is not answering.
    case unavailable(String)
    /// Anything else that failed on the way.
    case failed(String)
    /// The request did not prove it may drive this vcd.
    case unauthorized(String)
    /// The request is bigger than vcd reads: fix the request, as for `invalid`.
    case tooLarge(String)

    public var description: String {
        switch self {
        case .invalid(let m), .notFound(let m), .conflict(let m), .unavailable(let m), .failed(let m),
            .unauthorized(let m), .tooLarge(let m):
            return m
        }
    }

    public var code: String {
        switch self {
        case .invalid: return "invalid"
        case .notFound: return "not-found"
        case .conflict: return "conflict"
        case .unavailable: return "unavailable"
        case .failed: return "failed"
        case .unauthorized: return "unauthorized"
        case .tooLarge: return "too-large"
        }
    }

    public var httpStatus: Int {
        switch self {
        case .invalid: return 400
        case .notFound: return 404
        case .conflict: return 409
        case .unavailable: return 503
        case .failed: return 500
        case .unauthorized: return 401
        case .tooLarge: return 413
        }
    }

    public var apiError: APIError { APIError(code: code, message: description) }

    /// Classifies whatever a lower module threw.
    public static func from(_ error: any Error) -> DaemonError {
        switch error {
        case let e as DaemonError: return e
        case let e as ModelError: return .invalid(e.description)
        case let e as CatalogError:
            switch e {
            case .alreadyExists, .busy, .conflict: return .conflict(e.description)
            case .notFound: return .notFound(e.description)
            case .unreachable, .noQuorum: return .unavailable(e.description)
            // etcd electing a leader is a daemon that is briefly down, not a failed request.
            case .rejected: return e.isRetryable ? .unavailable(e.description) : .failed(e.description)
            case .corrupt: return .failed(e.description)
            case .removed, .nameInUse: return .conflict(e.description)
            case .unregistered: return .unavailable(e.description)
            }
        case let e as StorageError:
            switch e {
            case .notADiskImage, .unreadable: return .invalid(e.description)
            case .targetDaemon, .poolUnavailable: return .unavailable(e.description)
            default: return .failed(e.description)
            }
        case let e as LibvirtError:
            if e.isUnanswered {
                // Hung, not gone: restarting it blindly could lose what it is doing.
                return .unavailable("libvirtd is not answering (\(e.message)); check it (scripts/daemons.sh status)")
            }
            if e.isConnectionLost {
                return .unavailable("libvirtd is not answering (\(e.message)); start it (scripts/daemons.sh start)")
            }
            return .failed("libvirt: \(e.description)")
        case let e as ISCSIError: return .failed("iSCSI: \(e.description)")
        case let e as NetworkError: return .failed(e.description)
        case let e as CommandError: return .failed(e.description)
        case is CancellationError: return .failed("the operation was cancelled")
        default: return .failed("\(error)")
        }
    }
}
