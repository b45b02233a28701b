import CLinux
import Glibc
import Logging
import NIOPosix
import VCHost
import VCModel

/// Where the pool lives and, when its directory cannot reflink, how the embedded pool
/// (a filesystem image file, loop-mounted on that directory) is made.
public struct PoolConfiguration: Codable, Sendable, Equatable {
    public var path: String
    public var embeddedImage: String
    public var embeddedSizeGiB: Int
    /// `btrfs` or `xfs`.
    public var embeddedFilesystem: String

    public init(
        path: String = "/var/lib/peerless/pool", embeddedImage: String = "/var/lib/peerless/pool.img",
        embeddedSizeGiB: Int = 40, embeddedFilesystem: String = "btrfs"
    ) {
        self.path = path
        self.embeddedImage = embeddedImage
        self.embeddedSizeGiB = embeddedSizeGiB
        self.embeddedFilesystem = embeddedFilesystem
    }
}

/// Golden images and per-VM disks as files of one reflink-capable filesystem. A clone
/// shares every extent with its golden image, so it costs the same for 1 GiB and 100 GiB.
public struct StoragePool: Sendable {
    public let configuration: PoolConfiguration
    private let logger: Logger

    public var root: String { configuration.path }

    /// XFS's copy-on-write extent size hint on clones: small, so that a guest's 4 KiB
    /// write does not allocate a large extent.
    public static let cowExtentSizeHint: UInt32 = 64 * 1024

    public init(configuration: PoolConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    public func path(_ relative: String) -> String { "\(root)/\(relative)" }

    /// Threads for file work: the clones and unlinks of a whole cluster run at once.
    private static let threads: NIOThreadPool = {
        let pool = NIOThreadPool(numberOfThreads: 8)
        pool.start()
        return pool
    }()

    /// Runs file work on a thread of the pool's own, never on Swift's cooperative pool:
    /// FICLONE and the unlink of a large, shared file block for as long as the filesystem
    /// takes (well under a millisecond here, much longer for an image of many extents),
    /// and a blocked cooperative thread stalls every other task of vcd.
    public func offload<T: Sendable>(
        _ body: @escaping @Sendable (StoragePool) throws(StorageError) -> T
    ) async throws(StorageError) -> T {
        do {
            return try await Self.threads.runIfActive { try body(self) }
        } catch let error as StorageError {
            throw error
        } catch {
            throw .fileFailed(path: root, operation: "run file work in", reason: "\(error)")
        }
    }

    /// Makes the pool usable: its directory if that can reflink, else the embedded pool
    /// (made on first use, mounted again after a restart). Idempotent.
    public func prepare() async throws(StorageError) -> PoolStatus {
        try makeDirectories(root)
        if try !canReflink(root) {
            try await mountEmbedded()
            guard try canReflink(root) else {
                throw .poolUnavailable(
                    path: root, reason: "the embedded \(configuration.embeddedFilesystem) pool cannot reflink")
            }
        }
        for sub in ["images", "disks", "saves"] { try makeDirectories("\(root)/\(sub)") }
        return try status()
    }

    public func status() throws(StorageError) -> PoolStatus {
        var st = statvfs()
        guard statvfs(root, &st) == 0 else { throw .fileFailed(path: root, operation: "statvfs", reason: errnoText()) }
        let mounted = Self.mountSource(of: root)
        let backing = mounted.map { _ in "loop image \(configuration.embeddedImage)" } ?? "directory"
        return PoolStatus(
            path: root, filesystem: try filesystemName(root), backing: backing,
            sizeBytes: UInt64(st.f_blocks) * UInt64(st.f_frsize), freeBytes: UInt64(st.f_bavail) * UInt64(st.f_frsize))
    }

    /// Creates an empty (sparse) file of `size` bytes; fails if it exists.
    public func createFile(_ relative: String, size: UInt64) throws(StorageError) {
        let p = path(relative)
        try makeDirectories(HostFiles.parent(p))
        let fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .fileFailed(path: p, operation: "create", reason: errnoText()) }
        defer { close(fd) }
        guard ftruncate(fd, off_t(size)) == 0 else {
            let reason = errnoText()
            unlink(p)
            throw .fileFailed(path: p, operation: "size", reason: reason)
        }
    }

    /// Makes `destination` a copy-on-write clone of `source` (both pool-relative).
    public func clone(_ source: String, to destination: String) throws(StorageError) {
        let src = path(source)
        let dst = path(destination)
        try makeDirectories(HostFiles.parent(dst))
        let sfd = open(src, O_RDONLY | O_CLOEXEC)
        guard sfd >= 0 else { throw .cloneFailed(source: src, destination: dst, reason: errnoText()) }
        defer { close(sfd) }
        let dfd = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard dfd >= 0 else { throw .cloneFailed(source: src, destination: dst, reason: errnoText()) }
        defer { close(dfd) }
        var magic: Int64 = 0
        if peerless_fs_type(dfd, &magic) == 0, magic == Self.xfsMagic {
            // Must be set before the file shares extents to take effect on later writes.
            _ = peerless_set_cow_extent_size(dfd, Self.cowExtentSizeHint)
        }
        let rc = peerless_ficlone(dfd, sfd)
        guard rc == 0 else {
            unlink(dst)
            throw .cloneFailed(source: src, destination: dst, reason: String(cString: strerror(-rc)))
        }
    }

    /// Removes a pool file. Idempotent.
    public func remove(_ relative: String) throws(StorageError) {
        let p = path(relative)
        guard unlink(p) == 0 || errno == ENOENT else {
            throw .fileFailed(path: p, operation: "remove", reason: errnoText())
        }
    }

    /// Removes an empty pool directory (e.g. a cluster's disk folder). Idempotent.
    public func removeDirectory(_ relative: String) {
        rmdir(path(relative))
    }

    public func exists(_ relative: String) -> Bool { access(path(relative), F_OK) == 0 }

    public func size(_ relative: String) throws(StorageError) -> UInt64 {
        var st = stat()
        guard stat(path(relative), &st) == 0 else {
            throw .fileFailed(path: path(relative), operation: "stat", reason: errnoText())
        }
        return UInt64(st.st_size)
    }

    // MARK: - the embedded pool

    private func mountEmbedded() async throws(StorageError) {
        let image = configuration.embeddedImage
        if Self.mountSource(of: root) != nil { return }
        if access(image, F_OK) != 0 {
            guard (1...65536).contains(configuration.embeddedSizeGiB) else {
                throw .poolUnavailable(
                    path: root, reason: "embedded pool size \(configuration.embeddedSizeGiB) GiB is out of range")
            }
            logger.info(
                "making the embedded pool",
                metadata: ["image": "\(image)", "size_gib": "\(configuration.embeddedSizeGiB)"])
            try makeDirectories(HostFiles.parent(image))
            let fd = open(image, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw .poolUnavailable(path: image, reason: errnoText()) }
            let sized = ftruncate(fd, off_t(configuration.embeddedSizeGiB) << 30) == 0
            close(fd)
            guard sized else { throw .poolUnavailable(path: image, reason: errnoText()) }
            let mkfs: [String] =
                switch configuration.embeddedFilesystem {
                case "xfs": ["mkfs.xfs", "-q", "-m", "reflink=1", image]
                default: ["mkfs.btrfs", "-q", "-f", image]
                }
            do {
                try await HostCommand.run(mkfs[0], Array(mkfs.dropFirst()), logger: logger)
            } catch {
                unlink(image)
                throw .poolUnavailable(path: image, reason: error.description)
            }
        }
        do {
            try await HostCommand.run("mount", ["-o", "loop", image, root], logger: logger)
        } catch {
            throw .poolUnavailable(path: root, reason: "mounting \(image): \(error.reason)")
        }
        logger.info("mounted the embedded pool", metadata: ["image": "\(image)", "path": "\(root)"])
    }

    /// Unmounts the embedded pool (tests and teardown). Leaves the image file.
    public func unmountEmbedded() async throws(StorageError) {
        guard Self.mountSource(of: root) != nil else { return }
        do {
            try await HostCommand.run("umount", [root], logger: logger)
        } catch {
            throw .poolUnavailable(path: root, reason: "unmounting: \(error.reason)")
        }
    }

    /// The device mounted exactly at `path`, from /proc/self/mountinfo.
    static func mountSource(of path: String) -> String? {
        guard let text = try? HostFiles.read("/proc/self/mountinfo") else { return nil }
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count > 9, fields[4] == path, let dash = fields.firstIndex(of: "-") else { continue }
            return fields.count > dash + 2 ? String(fields[dash + 2]) : ""
        }
        return nil
    }

    // MARK: - helpers

    private func canReflink(_ dir: String) throws(StorageError) -> Bool {
        let a = "\(dir)/.reflink-probe-\(getpid())"
        let b = a + ".clone"
        defer {
            unlink(a)
            unlink(b)
        }
        let afd = open(a, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard afd >= 0 else { throw .poolUnavailable(path: dir, reason: errnoText()) }
        defer { close(afd) }
        var block = [UInt8](repeating: 0x50, count: 4096)
        guard write(afd, &block, block.count) == block.count, fsync(afd) == 0 else {
            throw .poolUnavailable(path: dir, reason: errnoText())
        }
        let bfd = open(b, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard bfd >= 0 else { throw .poolUnavailable(path: dir, reason: errnoText()) }
        defer { close(bfd) }
        return peerless_ficlone(bfd, afd) == 0
    }

    static let xfsMagic: Int64 = 0x5846_5342
    static let btrfsMagic: Int64 = 0x9123_683E

    private func filesystemName(_ path: String) throws(StorageError) -> String {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw .fileFailed(path: path, operation: "open", reason: errnoText()) }
        defer { close(fd) }
        var magic: Int64 = 0
        guard peerless_fs_type(fd, &magic) == 0 else { return "unknown" }
        switch magic {
        case Self.btrfsMagic: return "btrfs"
        case Self.xfsMagic: return "xfs"
        case 0xEF53: return "ext4"
        case 0x0102_1994: return "tmpfs"
        default: return "0x" + String(magic, radix: 16)
        }
    }

    private func makeDirectories(_ p: String) throws(StorageError) {
        do {
            try HostFiles.makeDirectories(p)
        } catch {
            throw .fileFailed(path: error.path, operation: "create directory", reason: error.reason)
        }
    }
}

func errnoText() -> String { HostFiles.lastError() }
