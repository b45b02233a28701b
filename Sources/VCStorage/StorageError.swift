// VCStorage: golden images and per-VM copy-on-write disks in a reflink pool, and their
// iSCSI exports through tgt. It owns files under the pool root and targets whose IQN
// starts with Peerless's prefix; it never decides which VMs exist.

public enum StorageError: Error, Sendable, CustomStringConvertible {
    /// The pool cannot reflink and no embedded pool could be made.
    case poolUnavailable(path: String, reason: String)
    /// A clone (FICLONE) failed.
    case cloneFailed(source: String, destination: String, reason: String)
    case fileFailed(path: String, operation: String, reason: String)
    /// tgtd is not running, or not answering on its management socket.
    case targetDaemon(reason: String)
    case targetFailed(iqn: String, operation: String, reason: String)
    /// tgtd answered a management request with one of its error codes; `subject` names
    /// the target or account, `action` what was asked of it.
    case targetRefused(subject: String, action: String, refusal: TargetDaemon.Refusal)
    case notADiskImage(path: String, reason: String)
    case unreadable(path: String, reason: String)

    public var description: String {
        switch self {
        case .poolUnavailable(let path, let reason): return "storage pool \(path) is not usable: \(reason)"
        case .cloneFailed(let s, let d, let reason): return "could not clone \(s) to \(d): \(reason)"
        case .fileFailed(let path, let op, let reason): return "could not \(op) \(path): \(reason)"
        case .targetDaemon(let reason):
            return "the iSCSI target daemon (tgtd) is not available: \(reason); start it (scripts/daemons.sh start)"
        case .targetFailed(let iqn, let op, let reason): return "could not \(op) iSCSI target \(iqn): \(reason)"
        case .targetRefused(let subject, let action, let refusal):
            return "could not \(action) \(subject): tgtd says \(refusal.message)"
        case .notADiskImage(let path, let reason):
            return "\(path) is not a disk image: \(reason); give a raw or qcow2 disk image"
        case .unreadable(let path, let reason): return "cannot read \(path): \(reason)"
        }
    }
}
