import Glibc

/// Small file operations the host-facing modules share: directories, small text files
/// (configuration, pid files, /proc), and atomic replacement.
public enum HostFiles {
    public struct Failure: Error, Sendable, CustomStringConvertible {
        public var path: String
        public var operation: String
        public var reason: String
        public var description: String { "could not \(operation) \(path): \(reason)" }
    }

    /// `mkdir -p` with mode 0755.
    public static func makeDirectories(_ path: String) throws(Failure) {
        var partial = ""
        for component in path.split(separator: "/") {
            partial += "/" + component
            if mkdir(partial, 0o755) != 0 && errno != EEXIST {
                throw Failure(path: partial, operation: "create directory", reason: lastError())
            }
        }
    }

    /// The whole content of a small file.
    public static func read(_ path: String) throws(Failure) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Failure(path: path, operation: "read", reason: lastError()) }
        defer { close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = Glibc.read(fd, &buf, buf.count)
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw Failure(path: path, operation: "read", reason: lastError()) }
            if n == 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Replaces a file's content atomically (write a sibling, then rename over it).
    public static func write(_ path: String, _ text: String, mode: mode_t = 0o644) throws(Failure) {
        let tmp = path + ".new"
        unlink(tmp)
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw Failure(path: tmp, operation: "write", reason: lastError()) }
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        // On disk before it replaces the old file: a crash leaves the old or the new one.
        let synced = fsync(fd) == 0
        close(fd)
        guard written == bytes.count, synced, rename(tmp, path) == 0 else {
            unlink(tmp)
            throw Failure(path: path, operation: "write", reason: lastError())
        }
    }

    /// The directory part of a path.
    public static func parent(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return "/" }
        return String(path[..<slash])
    }

    /// strerror of the current errno.
    public static func lastError() -> String { String(cString: strerror(errno)) }
}

extension StringProtocol {
    /// Without leading and trailing whitespace.
    public var trimmed: String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return String(s)
    }
}
