import Foundation
import ISCSI
import Testing
import VCStorage

/// libiscsi logins against a real tgtd: a refused login (here, an initiator name the
/// target's ACL does not list) must free its libiscsi context exactly once. A double free
/// crashes the whole vcd sooner or later, so the test refuses many logins in one process.
@Suite(.serialized) struct ISCSILoginTests {
    @Test(.timeLimit(.minutes(5)))
    func refusedLoginsWithAnotherInitiatorNameNeitherCrashNorLetItIn() async throws {
        try await OwnTargetDaemon.with { tgtd in
            let disk = try tgtd.disk("login")
            let exporter = TargetExporter(controlPort: tgtd.controlPort, logger: TargetDaemonTests.logger)
            _ = try await exporter.export(iqn: disk.iqn, file: disk.file, initiators: [disk.initiator], chap: nil)
            let address = ISCSITarget(portal: "127.0.0.1:\(tgtd.iscsiPort)", iqn: disk.iqn, lun: 1)

            let stranger = ISCSIClient(
                initiator: "iqn.2026-11.dev.peerless:node.stranger-\(tgtd.controlPort)", threads: 2)
            var refused = 0
            var lastMessage = ""
            for attempt in 0..<250 {
                do {
                    try await stranger.withSession(address) { _ in }
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
            let member = ISCSIClient(initiator: disk.initiator, threads: 1)
            let capacity = try await member.withSession(address) { session in
                try session.testUnitReady()
                return try session.readCapacity()
            }
            try await member.shutdown()
            #expect(capacity.bytes == OwnTargetDaemon.diskBytes)
        }
    }
}
