import Foundation
import ISCSI
import Testing

/// libiscsi logins against a real tgtd: a refused login (here, an initiator name the
/// target's ACL does not list) must free its libiscsi context exactly once. A double free
/// crashes the whole vcd sooner or later, so the test refuses many logins in one process.
@Suite(.serialized) struct ISCSILoginTests {
    @Test(.timeLimit(.minutes(5)))
    func refusedLoginsWithAnotherInitiatorNameNeitherCrashNorLetItIn() async throws {
        try await LoginTarget.with { target in
            let stranger = ISCSIClient(initiator: "iqn.2026-11.dev.peerless:node.stranger-\(target.id)", threads: 2)
            var refused = 0
            var lastMessage = ""
            for attempt in 0..<250 {
                do {
                    try await stranger.withSession(target.address) { _ in }
                    Issue.record("login \(attempt) with an initiator name outside the ACL succeeded")
                    break
                } catch let error as ISCSIError {
                    refused += 1
                    lastMessage = error.message
                }
            }
            try await stranger.shutdown()
            #expect(refused == 250)
            #expect(lastMessage.contains("Target not found"), "libiscsi said: \(lastMessage)")

            // The ACL is what refused them: the listed name still logs in after all of it.
            let member = ISCSIClient(initiator: target.initiator, threads: 1)
            let capacity = try await member.withSession(target.address) { session in
                try session.testUnitReady()
                return try session.readCapacity()
            }
            try await member.shutdown()
            #expect(capacity.bytes == LoginTarget.lunBytes)
        }
    }
}

/// One tgtd of the test's own with one target: a file LUN and an initiator-name ACL.
struct LoginTarget {
    static let lunBytes: UInt64 = 16 << 20
    let id: String
    let root: String
    let controlPort: Int
    let portal: String
    let iqn: String
    /// The only initiator name the target's ACL lists.
    let initiator: String
    var address: ISCSITarget { ISCSITarget(portal: portal, iqn: iqn, lun: 1) }

    /// Runs `body` with a started tgtd and target; always stops that tgtd.
    static func with(_ body: (LoginTarget) async throws -> Void) async throws {
        let target = try await start()
        do {
            try await body(target)
        } catch {
            await target.stop()
            throw error
        }
        await target.stop()
    }

    private static func start() async throws -> LoginTarget {
        let id = String(UUID().uuidString.lowercased().prefix(6))
        let root = "/var/tmp/peerless-login-\(id)"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let lun = "\(root)/lun.img"
        guard FileManager.default.createFile(atPath: lun, contents: nil), truncate(lun, off_t(lunBytes)) == 0 else {
            throw TestbedError.startFailed("cannot make \(lun): \(String(cString: strerror(errno)))")
        }
        // Random ports, as the testbeds pick theirs. A port another tgtd answers on is
        // skipped: this test deletes its tgtd's whole system at the end.
        var lastFailure = ""
        for _ in 0..<5 {
            let port = Int.random(in: 3300...3899)
            let target = LoginTarget(
                id: id, root: root, controlPort: Int.random(in: 1000...1999), portal: "127.0.0.1:\(port)",
                iqn: "iqn.2026-11.dev.peerless:test.login-\(id)", initiator: "iqn.2026-11.dev.peerless:node.login-\(id)"
            )
            guard try await target.tgtadm(["--op", "show", "--mode", "system"]).status != 0, isFree(port: port) else {
                lastFailure = "ports \(target.controlPort), \(port) are taken"
                continue
            }
            let r = try await sh("tgtd", ["-C", "\(target.controlPort)", "--iscsi", "portal=\(target.portal)"])
            guard r.status == 0 else {
                lastFailure = "\(r)"
                continue
            }
            do {
                _ = try await eventually("tgtd to answer", timeout: .seconds(10), every: .milliseconds(100)) {
                    let r = try await target.tgtadm(["--op", "show", "--mode", "system"])
                    return (r.status == 0 ? true : nil, r.stderr)
                }
                try await target.make(lun: lun)
                return target
            } catch {
                await target.stop()
                throw error
            }
        }
        try? FileManager.default.removeItem(atPath: root)
        throw TestbedError.startFailed("tgtd: \(lastFailure)")
    }

    /// Whether a loopback TCP port can be bound now.
    private static func isFree(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }

    private func make(lun: String) async throws {
        for args in [
            ["--op", "new", "--mode", "target", "--tid", "1", "-T", iqn],
            ["--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", lun],
            ["--op", "bind", "--mode", "target", "--tid", "1", "--initiator-name", initiator],
        ] {
            let r = try await tgtadm(args)
            guard r.status == 0 else { throw TestbedError.startFailed("tgtadm \(args.joined(separator: " ")): \(r)") }
        }
    }

    @discardableResult
    func tgtadm(_ args: [String]) async throws -> CommandResult {
        try await sh("tgtadm", ["-C", "\(controlPort)", "--lld", "iscsi"] + args)
    }

    /// tgtd ignores SIGTERM; deleting its system through the management port ends it.
    func stop() async {
        _ = try? await tgtadm(["--op", "delete", "--mode", "target", "--tid", "1", "--force"])
        _ = try? await tgtadm(["--op", "delete", "--mode", "system"])
        try? FileManager.default.removeItem(atPath: root)
    }
}
