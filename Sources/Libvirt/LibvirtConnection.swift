import CLibvirt
import Glibc

/// The host's CPUs and memory as libvirt reports them.
public struct NodeInfo: Sendable, Equatable {
    public var cpus: Int
    public var memoryKiB: UInt64
}

/// A connection to a libvirt daemon. Calls block: run them off the cooperative pool
/// (see `Hypervisor`).
///
/// `@unchecked Sendable` is safe here: libvirt documents `virConnectPtr` as usable from
/// several threads at once, and this class never mutates its stored handle after `init`.
public final class LibvirtConnection: @unchecked Sendable {
    private let handle: virConnectPtr
    public let uri: String

    /// How often an idle connection asks libvirtd whether it is alive, and how many
    /// unanswered asks close it: a hung libvirtd then fails the calls blocked on it within
    /// about `interval * (count + 1)` seconds, instead of never.
    public static let keepAliveIntervalSeconds: Int32 = 5
    public static let keepAliveCount: UInt32 = 3

    private static let initialized: Bool = {
        // Required before any other call when libvirt is used from several threads, and it
        // also stops libvirt from printing errors to stderr by itself.
        _ = virInitialize()
        virSetErrorFunc(nil) { _, _ in }
        // Before the first connection: keepalives need the event loop.
        return LibvirtEventLoop.started
    }()

    public init(uri: String) throws(LibvirtError) {
        guard Self.initialized else {
            throw LibvirtError(
                operation: "virEventRegisterDefaultImpl", code: -1, domain: -1,
                message: "libvirt's event loop could not be started, so connections would have no keepalive")
        }
        guard let h = virConnectOpen(uri) else { throw LibvirtError.last("virConnectOpen(\(uri))") }
        // 1 means the other side has no keepalive support; only -1 is a failure, and not
        // for a driver that runs inside this process (test:///): it has no socket to hang.
        if virConnectSetKeepAlive(h, Self.keepAliveIntervalSeconds, Self.keepAliveCount) < 0 {
            let e = LibvirtError.last("virConnectSetKeepAlive(\(uri))")
            guard e.code == Int32(VIR_ERR_NO_SUPPORT.rawValue) else {
                virConnectClose(h)
                throw e
            }
        }
        // Stored only now: a throw after every property is set would run deinit as well.
        self.handle = h
        self.uri = uri
    }

    deinit { virConnectClose(handle) }

    public var isAlive: Bool { virConnectIsAlive(handle) == 1 }

    public func nodeInfo() throws(LibvirtError) -> NodeInfo {
        var info = virNodeInfo()
        guard virNodeGetInfo(handle, &info) == 0 else { throw LibvirtError.last("virNodeGetInfo") }
        return NodeInfo(cpus: Int(info.cpus), memoryKiB: UInt64(info.memory))
    }

    /// libvirt's version as major.minor.release.
    public func libraryVersion() throws(LibvirtError) -> String {
        var v: UInt = 0
        guard virConnectGetLibVersion(handle, &v) == 0 else { throw LibvirtError.last("virConnectGetLibVersion") }
        return "\(v / 1_000_000).\(v / 1000 % 1000).\(v % 1000)"
    }

    /// The domain capabilities XML for a virtualization type (`kvm` or `qemu`).
    public func domainCapabilities(virtType: String) throws(LibvirtError) -> String {
        guard let c = virConnectGetDomainCapabilities(handle, nil, "x86_64", nil, virtType, 0) else {
            throw LibvirtError.last("virConnectGetDomainCapabilities(\(virtType))")
        }
        defer { free(c) }
        return String(cString: c)
    }

    /// Defines (or redefines) a persistent domain.
    @discardableResult
    public func define(xml: String) throws(LibvirtError) -> Domain {
        guard let d = virDomainDefineXML(handle, xml) else { throw LibvirtError.last("virDomainDefineXML") }
        return Domain(d)
    }

    /// The domain of that name, or nil when there is none.
    public func domain(named name: String) throws(LibvirtError) -> Domain? {
        guard let d = virDomainLookupByName(handle, name) else {
            let e = LibvirtError.last("virDomainLookupByName(\(name))")
            if e.isNoDomain { return nil }
            throw e
        }
        return Domain(d)
    }

    public func allDomains() throws(LibvirtError) -> [Domain] {
        var list: UnsafeMutablePointer<virDomainPtr?>?
        let n = virConnectListAllDomains(handle, &list, 0)
        guard n >= 0, let list else { throw LibvirtError.last("virConnectListAllDomains") }
        defer { free(list) }
        return (0..<Int(n)).compactMap { list[$0].map(Domain.init) }
    }

    /// Restores a domain from a memory image written by `Domain.save(to:)`: running, or
    /// paused until `Domain.resume()`.
    /// `xml` replaces the host-side parts of the saved definition (another node's portal
    /// or initiator name); libvirt's ABI check refuses anything the guest would notice.
    public func restore(from path: String, xml: String? = nil, paused: Bool = false) throws(LibvirtError) {
        let flags = paused ? VIR_DOMAIN_SAVE_PAUSED.rawValue : VIR_DOMAIN_SAVE_RUNNING.rawValue
        guard virDomainRestoreFlags(handle, path, xml, UInt32(flags)) == 0 else {
            throw LibvirtError.last("virDomainRestoreFlags(\(path))")
        }
    }

    /// The domain definition inside a memory image.
    public func saveImageXML(_ path: String) throws(LibvirtError) -> String {
        guard let c = virDomainSaveImageGetXMLDesc(handle, path, UInt32(VIR_DOMAIN_SAVE_IMAGE_XML_SECURE.rawValue))
        else {
            throw LibvirtError.last("virDomainSaveImageGetXMLDesc(\(path))")
        }
        defer { free(c) }
        return String(cString: c)
    }

    /// Whether `path` is a complete memory image libvirt can restore.
    public func isSaveImage(_ path: String) -> Bool {
        guard let c = virDomainSaveImageGetXMLDesc(handle, path, 0) else {
            virResetLastError()
            return false
        }
        free(c)
        return true
    }

    /// Sets the value of the iSCSI CHAP secret with this usage name, defining it first
    /// when libvirt has none (libvirt refuses a second secret with the same usage).
    public func defineISCSISecret(usage: String, value: [UInt8]) throws(LibvirtError) {
        var secret = virSecretLookupByUsage(handle, Int32(VIR_SECRET_USAGE_TYPE_ISCSI.rawValue), usage)
        if secret == nil {
            let e = LibvirtError.last("virSecretLookupByUsage(\(usage))")
            guard e.isNoSecret else { throw e }
            let xml =
                "<secret ephemeral='no' private='yes'><usage type='iscsi'><target>\(usage)</target></usage></secret>"
            secret = virSecretDefineXML(handle, xml, 0)
        }
        guard let s = secret else { throw LibvirtError.last("virSecretDefineXML(\(usage))") }
        defer { virSecretFree(s) }
        let rc = value.withUnsafeBufferPointer { virSecretSetValue(s, $0.baseAddress, $0.count, 0) }
        guard rc == 0 else { throw LibvirtError.last("virSecretSetValue(\(usage))") }
    }

    /// Removes the iSCSI CHAP secret with this usage name; nothing to do when libvirt has
    /// none (a VM whose secret was never made, or was removed already).
    public func removeISCSISecret(usage: String) throws(LibvirtError) {
        guard let s = virSecretLookupByUsage(handle, Int32(VIR_SECRET_USAGE_TYPE_ISCSI.rawValue), usage) else {
            let e = LibvirtError.last("virSecretLookupByUsage(\(usage))")
            if e.isNoSecret { return }
            throw e
        }
        defer { virSecretFree(s) }
        guard virSecretUndefine(s) == 0 else {
            let e = LibvirtError.last("virSecretUndefine(\(usage))")
            // Another caller removed it between the lookup and here.
            if e.isNoSecret { return }
            throw e
        }
    }
}
