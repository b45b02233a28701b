import Glibc
import ISCSI
import Testing

/// A refused login must free its libiscsi context exactly once. A double free does not
/// always crash on the first refusal, so the tests repeat it many times in one process.
@Suite struct ISCSISessionTests {
    /// A loopback port on which nothing listens: bound once to learn a free number, then
    /// closed, so connecting to it is refused at once.
    static func closedLoopbackPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #expect(fd >= 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0
            }
        }
        try #require(bound, "bind: \(String(cString: strerror(errno)))")
        return Int(UInt16(bigEndian: address.sin_port))
    }

    @Test func refusedLoginsFreeTheirContextOnce() throws {
        let port = try Self.closedLoopbackPort()
        let target = ISCSITarget(portal: "127.0.0.1:\(port)", iqn: "iqn.2026-11.dev.peerless:test.nothing")
        for attempt in 0..<300 {
            do {
                _ = try ISCSISession(initiator: "iqn.2026-11.dev.peerless:node.unit", target: target)
                Issue.record("login \(attempt) to a closed port succeeded")
                return
            } catch {
                #expect(error.operation == "login to \(target)")
                #expect(!error.message.isEmpty)
            }
        }
    }

    @Test func refusedLoginsThroughTheClientFreeTheirContextOnce() async throws {
        let port = try Self.closedLoopbackPort()
        let target = ISCSITarget(portal: "127.0.0.1:\(port)", iqn: "iqn.2026-11.dev.peerless:test.nothing")
        let client = ISCSIClient(initiator: "iqn.2026-11.dev.peerless:node.unit", threads: 2)
        var refused = 0
        for _ in 0..<200 {
            do {
                try await client.withSession(target) { _ in }
            } catch is ISCSIError {
                refused += 1
            }
        }
        try await client.shutdown()
        #expect(refused == 200)
    }
}
