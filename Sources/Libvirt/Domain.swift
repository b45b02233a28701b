import CLibvirt
import Glibc

/// What libvirt says a domain is doing.
public enum DomainState: String, Sendable, Equatable {
    case running, blocked, paused, shutdown, shutoff, crashed, suspended, unknown
}

/// A libvirt domain handle.
///
/// `@unchecked Sendable` is safe: libvirt's object handles are reference-counted and
/// usable from any thread, and this class never mutates the stored handle.
public final class Domain: @unchecked Sendable {
    private let handle: virDomainPtr
    /// Read once: a domain's name never changes, and asking libvirt for it while building
    /// an error would reset the error being reported (see `LibvirtError.last`).
    public let name: String

    init(_ handle: virDomainPtr) {
        self.handle = handle
        self.name = virDomainGetName(handle).map { String(cString: $0) } ?? ""
    }
    deinit { virDomainFree(handle) }

    public func state() throws(LibvirtError) -> DomainState {
        var state: Int32 = 0
        var reason: Int32 = 0
        guard virDomainGetState(handle, &state, &reason, 0) == 0 else {
            throw LibvirtError.last("virDomainGetState(\(name))")
        }
        switch UInt32(state) {
        case VIR_DOMAIN_RUNNING.rawValue: return .running
        case VIR_DOMAIN_BLOCKED.rawValue: return .blocked
        case VIR_DOMAIN_PAUSED.rawValue: return .paused
        case VIR_DOMAIN_SHUTDOWN.rawValue: return .shutdown
        case VIR_DOMAIN_SHUTOFF.rawValue: return .shutoff
        case VIR_DOMAIN_CRASHED.rawValue: return .crashed
        case VIR_DOMAIN_PMSUSPENDED.rawValue: return .suspended
        default: return .unknown
        }
    }

    public var isActive: Bool { virDomainIsActive(handle) == 1 }

    /// The domain's UUID as text; a redefinition must carry it, or libvirt refuses it.
    public var uuid: String? {
        var buf = [CChar](repeating: 0, count: Int(VIR_UUID_STRING_BUFLEN))
        guard virDomainGetUUIDString(handle, &buf) == 0 else { return nil }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Starts the domain (restoring a managed save image if it has one), optionally with
    /// its vCPUs paused until `resume()`.
    public func start(paused: Bool = false) throws(LibvirtError) {
        let flags = paused ? VIR_DOMAIN_START_PAUSED.rawValue : 0
        guard virDomainCreateWithFlags(handle, flags) == 0 else { throw LibvirtError.last("virDomainCreate(\(name))") }
    }

    /// Lets a paused domain's vCPUs run.
    public func resume() throws(LibvirtError) {
        guard virDomainResume(handle) == 0 else { throw LibvirtError.last("virDomainResume(\(name))") }
    }

    /// Stops it at once, like pulling the power cord.
    public func destroy() throws(LibvirtError) {
        guard virDomainDestroy(handle) == 0 else { throw LibvirtError.last("virDomainDestroy(\(name))") }
    }

    /// Removes the persistent definition together with any managed save image.
    public func undefine() throws(LibvirtError) {
        let flags = VIR_DOMAIN_UNDEFINE_MANAGED_SAVE.rawValue | VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA.rawValue
        guard virDomainUndefineFlags(handle, flags) == 0 else {
            throw LibvirtError.last("virDomainUndefineFlags(\(name))")
        }
    }

    /// Saves memory and device state to `path` and stops the domain; the definition stays.
    /// The image bypasses the host's page cache: it is written once and read once, and
    /// must not evict what running guests need.
    public func save(to path: String) throws(LibvirtError) {
        let flags = VIR_DOMAIN_SAVE_RUNNING.rawValue | VIR_DOMAIN_SAVE_BYPASS_CACHE.rawValue
        guard virDomainSaveFlags(handle, path, nil, UInt32(flags)) == 0 else {
            throw LibvirtError.last("virDomainSaveFlags(\(name))")
        }
    }

    /// The definition as another host must receive it in a migration (no host-only parts).
    public func migratableXML() throws(LibvirtError) -> String {
        guard let c = virDomainGetXMLDesc(handle, VIR_DOMAIN_XML_MIGRATABLE.rawValue | VIR_DOMAIN_XML_SECURE.rawValue)
        else { throw LibvirtError.last("virDomainGetXMLDesc(\(name), migratable)") }
        defer { free(c) }
        return String(cString: c)
    }

    /// Moves the running domain to another host's libvirtd while the guest runs
    /// (peer-to-peer: this libvirtd talks to `destination` itself), defines it there
    /// persistently with `xml` and removes it here once the guest runs there. A failure
    /// aborts the migration and leaves the guest running here.
    ///
    /// - Parameters:
    ///   - destination: the other libvirtd, e.g. `qemu+tcp://10.88.0.12/system`.
    ///   - migrationURI: where the guest's memory goes, e.g. `tcp://10.88.0.12`; the
    ///     destination QEMU listens on that address.
    ///   - xml: the definition on the destination (its host-side parts changed, such as
    ///     the initiator name its disk logs in with); libvirt's ABI check refuses
    ///     anything the guest would notice.
    public func migrateLive(to destination: String, migrationURI: String, listenAddress: String, xml: String)
        throws(LibvirtError)
    {
        var params: virTypedParameterPtr? = nil
        var count: Int32 = 0
        var capacity: Int32 = 0
        defer { virTypedParamsFree(params, count) }
        for (key, value) in [
            (VIR_MIGRATE_PARAM_URI, migrationURI), (VIR_MIGRATE_PARAM_LISTEN_ADDRESS, listenAddress),
            (VIR_MIGRATE_PARAM_DEST_XML, xml), (VIR_MIGRATE_PARAM_PERSIST_XML, xml),
        ] where virTypedParamsAddString(&params, &count, &capacity, key, value) != 0 {
            throw LibvirtError.last("virTypedParamsAddString(\(key))")
        }
        let flags =
            VIR_MIGRATE_LIVE.rawValue | VIR_MIGRATE_PEER2PEER.rawValue | VIR_MIGRATE_PERSIST_DEST.rawValue
            | VIR_MIGRATE_UNDEFINE_SOURCE.rawValue | VIR_MIGRATE_ABORT_ON_ERROR.rawValue
        guard virDomainMigrateToURI3(handle, destination, params, UInt32(count), flags) == 0 else {
            throw LibvirtError.last("virDomainMigrateToURI3(\(name), \(destination))")
        }
    }

    /// What the last completed job (a migration, on its destination) took: its whole
    /// time and the time the guest was paused, in milliseconds; nil when libvirt has no
    /// record of one.
    public func completedJob() -> (elapsedMilliseconds: UInt64, downtimeMilliseconds: UInt64?)? {
        var type: Int32 = 0
        var params: virTypedParameterPtr? = nil
        var count: Int32 = 0
        guard virDomainGetJobStats(handle, &type, &params, &count, VIR_DOMAIN_JOB_STATS_COMPLETED.rawValue) == 0
        else {
            virResetLastError()
            return nil
        }
        defer { virTypedParamsFree(params, count) }
        var elapsed: UInt64 = 0
        var downtime: UInt64 = 0
        guard virTypedParamsGetULLong(params, count, VIR_DOMAIN_JOB_TIME_ELAPSED, &elapsed) == 1 else { return nil }
        let hasDowntime = virTypedParamsGetULLong(params, count, VIR_DOMAIN_JOB_DOWNTIME, &downtime) == 1
        return (elapsed, hasDowntime ? downtime : nil)
    }

    public func xmlDescription() throws(LibvirtError) -> String {
        guard let c = virDomainGetXMLDesc(handle, 0) else { throw LibvirtError.last("virDomainGetXMLDesc(\(name))") }
        defer { free(c) }
        return String(cString: c)
    }

    /// Our metadata element in the persistent definition, or nil when there is none.
    public func metadata(namespace: String) -> String? {
        guard
            let c = virDomainGetMetadata(
                handle, Int32(VIR_DOMAIN_METADATA_ELEMENT.rawValue), namespace, VIR_DOMAIN_AFFECT_CONFIG.rawValue)
        else {
            virResetLastError()
            return nil
        }
        defer { free(c) }
        return String(cString: c)
    }
}
