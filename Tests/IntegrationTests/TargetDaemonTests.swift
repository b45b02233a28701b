import Foundation
import ISCSI
import Logging
import Testing

@testable import VCStorage

/// TargetExporter over tgtd's management socket, against a tgtd of each test's own:
/// target ids under parallel exports from one and from two exporters, CHAP, removal.
@Suite(.serialized) struct TargetDaemonTests {
    static let logger: Logger = {
        var logger = Logger(label: "target-daemon-tests")
        logger.logLevel = .warning
        return logger
    }()

    @Test(.timeLimit(.minutes(2)))
    func sixteenParallelExportsGetDistinctTidsAndKeepTheirFilesAndACLs() async throws {
        try await OwnTargetDaemon.with { tgtd in
            let exporter = TargetExporter(controlPort: tgtd.controlPort, logger: Self.logger)
            let disks = try (0..<16).map { try tgtd.disk("a-\($0)") }
            let made = try await exportInParallel(disks, by: [exporter])
            #expect(Set(made.map(\.tid)).count == 16, "tids: \(made.map(\.tid).sorted())")
            try await expectEachServesItsOwn(disks, tgtd: tgtd, exporter: exporter)
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func twoExportersOnOneTgtdNeverCollide() async throws {
        try await OwnTargetDaemon.with { tgtd in
            // Two actors share no state, as two processes would not.
            let first = TargetExporter(controlPort: tgtd.controlPort, logger: Self.logger)
            let second = TargetExporter(controlPort: tgtd.controlPort, logger: Self.logger)
            let disks = try (0..<16).map { try tgtd.disk("b-\($0)") }
            let made = try await exportInParallel(disks, by: [first, second])
            #expect(Set(made.map(\.tid)).count == 16, "tids: \(made.map(\.tid).sorted())")
            try await expectEachServesItsOwn(disks, tgtd: tgtd, exporter: first)
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func reExportsAmongNewExportsKeepDistinctTids() async throws {
        try await OwnTargetDaemon.with { tgtd in
            let exporter = TargetExporter(controlPort: tgtd.controlPort, logger: Self.logger)
            let old = try (0..<8).map { try tgtd.disk("r-\($0)") }
            _ = try await exportInParallel(old, by: [exporter])
            // The same IQNs with another file (re-made) and another initiator (corrected),
            // racing eight new targets.
            var disks = try old.enumerated().map { i, disk in
                var moved = disk
                if i.isMultiple(of: 2) { moved.file = try tgtd.disk("r-\(i)-moved").file }
                moved.initiator += "-new"
                return moved
            }
            disks += try (0..<8).map { try tgtd.disk("n-\($0)") }
            let made = try await exportInParallel(disks, by: [exporter])
            #expect(Set(made.map(\.tid)).count == 16, "tids: \(made.map(\.tid).sorted())")
            try await expectEachServesItsOwn(disks, tgtd: tgtd, exporter: exporter)
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func aBoundAccountRefusesLoginsWithoutItsSecret() async throws {
        try await OwnTargetDaemon.with { tgtd in
            let exporter = TargetExporter(controlPort: tgtd.controlPort, logger: Self.logger)
            let disk = try tgtd.disk("c")
            let chap = CHAPCredentials(user: "vm-c", password: "first-secret-0123")
            let before = childPageFaults()
            let target = try await exporter.export(
                iqn: disk.iqn, file: disk.file, initiators: [disk.initiator], chap: chap)
            // By construction no program runs (there is none to run); this checks that no
            // child was started and reaped meanwhile, which is where a password on a
            // command line would have been visible.
            #expect(childPageFaults() == before, "export ran a child process")
            #expect(target.accounts == ["vm-c"])
            #expect(TargetExporter.serves(target, file: disk.file, to: [disk.initiator], account: "vm-c"))

            let lun = "127.0.0.1:\(tgtd.iscsiPort)/\(disk.iqn)/1"
            let anonymous = try await sh("iscsi-inq", ["-i", disk.initiator, "iscsi://\(lun)"])
            #expect(anonymous.status != 0, "no secret: \(anonymous)")
            let wrong = try await sh("iscsi-inq", ["-i", disk.initiator, "iscsi://vm-c%wrong-secret-0123@\(lun)"])
            #expect(wrong.status != 0, "wrong secret: \(wrong)")
            let right = try await sh("iscsi-inq", ["-i", disk.initiator, "iscsi://vm-c%first-secret-0123@\(lun)"])
            #expect(right.status == 0, "right secret: \(right)")

            // Exporting again with another password re-sets it.
            let changed = CHAPCredentials(user: "vm-c", password: "second-secret-456")
            _ = try await exporter.export(iqn: disk.iqn, file: disk.file, initiators: [disk.initiator], chap: changed)
            let old = try await sh("iscsi-inq", ["-i", disk.initiator, "iscsi://vm-c%first-secret-0123@\(lun)"])
            #expect(old.status != 0, "the old secret: \(old)")
            let new = try await sh("iscsi-inq", ["-i", disk.initiator, "iscsi://vm-c%second-secret-456@\(lun)"])
            #expect(new.status == 0, "the new secret: \(new)")
            let again = try #require(try await exporter.target(disk.iqn))
            #expect(again.tid == target.tid && again.accounts == ["vm-c"] && again.initiators == [disk.initiator])
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func unexportRemovesTheTargetAndItsAccount() async throws {
        try await OwnTargetDaemon.with { tgtd in
            let exporter = TargetExporter(controlPort: tgtd.controlPort, logger: Self.logger)
            let disk = try tgtd.disk("d")
            let chap = CHAPCredentials(user: "vm-d", password: "the-secret-d-0123")
            _ = try await exporter.export(iqn: disk.iqn, file: disk.file, initiators: [disk.initiator], chap: chap)
            #expect(try await tgtd.tgtadm(["--op", "show", "--mode", "account"]).contains("vm-d"))

            try await exporter.unexport(iqn: disk.iqn, account: "vm-d")
            #expect(try await exporter.target(disk.iqn) == nil)
            #expect(!(try await tgtd.tgtadm(["--op", "show", "--mode", "target"]).contains(disk.iqn)))
            let accounts = try await tgtd.tgtadm(["--op", "show", "--mode", "account"])
            #expect(!accounts.contains("vm-d"), "accounts: \(accounts)")
            // Idempotent.
            try await exporter.unexport(iqn: disk.iqn, account: "vm-d")
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func listingsMatchTgtadmsAndPortalsAreTgtdsOwn() async throws {
        try await OwnTargetDaemon.with { tgtd in
            let exporter = TargetExporter(controlPort: tgtd.controlPort, logger: Self.logger)
            let disk = try tgtd.disk("e")
            _ = try await exporter.export(
                iqn: disk.iqn, file: disk.file, initiators: [disk.initiator],
                chap: CHAPCredentials(user: "vm-e", password: "the-secret-e-0123"))
            let text = try await tgtd.tgtadm(["--op", "show", "--mode", "target"])
            #expect(try await exporter.targets() == TargetExporter.parse(text))
            #expect(try await exporter.portals() == ["127.0.0.1:\(tgtd.iscsiPort)"])
        }
    }

    @Test func aMissingTgtdIsReportedAsTheDaemonBeingDown() async throws {
        // A port no tgtd of ours or the host's serves: below tgtd's range in these tests.
        let exporter = TargetExporter(controlPort: 999, logger: Self.logger)
        await #expect {
            _ = try await exporter.targets()
        } throws: { error in
            guard case .targetDaemon(let reason) = error as? StorageError else { return false }
            return reason.contains("/var/run/tgtd/socket.999")
        }
    }

    // MARK: - Helpers

    func exportInParallel(_ disks: [OwnTargetDaemon.Disk], by exporters: [TargetExporter]) async throws
        -> [TargetInfo]
    {
        try await withThrowingTaskGroup(of: TargetInfo.self) { group in
            for (i, disk) in disks.enumerated() {
                let exporter = exporters[i % exporters.count]
                group.addTask {
                    try await exporter.export(iqn: disk.iqn, file: disk.file, initiators: [disk.initiator], chap: nil)
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
    }

    func expectEachServesItsOwn(_ disks: [OwnTargetDaemon.Disk], tgtd: OwnTargetDaemon, exporter: TargetExporter)
        async throws
    {
        // tgtadm's listing, not ours, is the witness.
        let targets = TargetExporter.parse(try await tgtd.tgtadm(["--op", "show", "--mode", "target"]))
        #expect(targets.count == disks.count)
        for disk in disks {
            let target = targets.first { $0.iqn == disk.iqn }
            #expect(
                TargetExporter.serves(target, file: disk.file, to: [disk.initiator], account: nil),
                "\(disk.iqn): \(String(describing: target))")
        }
        #expect(try await exporter.targets() == targets)
    }

    /// Minor page faults of every child this process has reaped: any program run and
    /// waited for adds hundreds.
    func childPageFaults() -> Int {
        var usage = rusage()
        getrusage(RUSAGE_CHILDREN.rawValue, &usage)
        return usage.ru_minflt
    }
}

/// A tgtd of a test's own on random ports, with a directory for its disk files; stopped
/// and removed on every exit path.
final class OwnTargetDaemon: Sendable {
    struct Disk: Sendable {
        var iqn: String
        var file: String
        var initiator: String
    }

    let controlPort: Int
    let iscsiPort: Int
    let root: String
    private let pid: pid_t

    private init(controlPort: Int, iscsiPort: Int, root: String, pid: pid_t) {
        self.controlPort = controlPort
        self.iscsiPort = iscsiPort
        self.root = root
        self.pid = pid
    }

    static func with(_ body: (OwnTargetDaemon) async throws -> Void) async throws {
        let tgtd = try await start()
        do {
            try await body(tgtd)
        } catch {
            await tgtd.stop()
            throw error
        }
        await tgtd.stop()
    }

    private static func start() async throws -> OwnTargetDaemon {
        let root = "/var/tmp/peerless-tgtd-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        var last = ""
        for _ in 0..<5 {
            let controlPort = Int.random(in: 1000...1999)
            let iscsiPort = Int.random(in: 3300...3899)
            let child = try ChildProcess(
                "/usr/sbin/tgtd", ["-f", "-C", "\(controlPort)", "--iscsi", "portal=127.0.0.1:\(iscsiPort)"],
                log: "\(root)/tgtd.log")
            let exporter = TargetExporter(controlPort: controlPort, logger: TargetDaemonTests.logger)
            // Ours when it answers with our portal: another tgtd may hold the control port.
            let deadline = ContinuousClock.now + .seconds(10)
            while child.isRunning, ContinuousClock.now < deadline {
                if let portals = try? await exporter.portals(), portals == ["127.0.0.1:\(iscsiPort)"] {
                    return OwnTargetDaemon(controlPort: controlPort, iscsiPort: iscsiPort, root: root, pid: child.pid)
                }
                try await Task.sleep(for: .milliseconds(20))
            }
            child.stop(SIGKILL)
            last = (try? String(contentsOfFile: "\(root)/tgtd.log", encoding: .utf8)) ?? ""
        }
        try? FileManager.default.removeItem(atPath: root)
        throw TestbedError.startFailed("tgtd did not start on a free port: \(last)")
    }

    /// The size of every disk file `disk(_:)` makes.
    static let diskBytes: UInt64 = 1 << 20

    func disk(_ name: String) throws -> Disk {
        let file = "\(root)/\(name).raw"
        guard FileManager.default.createFile(atPath: file, contents: nil), truncate(file, off_t(Self.diskBytes)) == 0
        else {
            throw TestbedError.startFailed("cannot make \(file)")
        }
        return Disk(
            iqn: "iqn.2026-11.dev.peerless:disk.tgtd-test-\(controlPort)-\(name)", file: file,
            initiator: "iqn.2026-11.dev.peerless:node.tgtd-test-\(name)")
    }

    /// tgtadm against this tgtd: the witness the tests compare with.
    func tgtadm(_ arguments: [String]) async throws -> String {
        let r = try await sh("tgtadm", ["-C", "\(controlPort)", "--lld", "iscsi"] + arguments)
        guard r.status == 0 else { throw TestbedError.startFailed("tgtadm \(arguments): \(r)") }
        return r.stdout
    }

    /// tgtd stops only without targets: delete them, then the system, then wait for it.
    func stop() async {
        if let text = try? await tgtadm(["--op", "show", "--mode", "target"]) {
            for target in TargetExporter.parse(text) {
                _ = try? await tgtadm(["--op", "delete", "--mode", "target", "--tid", "\(target.tid)", "--force"])
            }
        }
        _ = try? await sh("tgtadm", ["-C", "\(controlPort)", "--op", "delete", "--mode", "system"])
        var status: Int32 = 0
        let deadline = ContinuousClock.now + .seconds(10)
        while waitpid(pid, &status, WNOHANG) == 0 {
            if ContinuousClock.now > deadline {
                kill(pid, SIGKILL)
                _ = waitpid(pid, &status, 0)
                break
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
        // tgtd leaves its socket and lock file behind.
        for file in ["", ".lock"] { unlink("/var/run/tgtd/socket.\(controlPort)\(file)") }
        try? FileManager.default.removeItem(atPath: root)
    }
}
