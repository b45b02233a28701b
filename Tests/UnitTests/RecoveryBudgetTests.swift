import Foundation
import Testing

@testable import VCDaemon
@testable import VCModel

/// The arithmetic of `vc explain timers`: each term named, the sums right, the case where
/// etcd's leader died with the node larger by the election and the lease extension, and
/// the presets equal to what vcd and the testbed really configure.
@Suite struct RecoveryBudgetTests {
    static let testbed = try! RecoveryBudget(.testbed)

    @Test func eachTermIsNamedAndTheWorstCaseIsTheirSum() {
        let b = Self.testbed
        #expect(b.terms.map(\.name) == ["leaseTTL", "expiryScan", "notice", "fencing", "restart"])
        // Noticed by vcd's node-loss loop, which reads the registrations every 0.5 s.
        #expect(b.terms.map(\.milliseconds) == [3000, 500, 500, 500, 1000])
        #expect(b.worstCaseMilliseconds == 5_500)
        #expect(b.terms.allSatisfy { !$0.label.isEmpty && !$0.why.isEmpty })
    }

    @Test func whenEtcdsLeaderDiedTooTheElectionAndTheExtensionAreAdded() throws {
        for election in [1000, 2000, 2500] {
            let b = try RecoveryBudget(
                .init(
                    leaseTTLSeconds: 5, etcdHeartbeatMilliseconds: 100, etcdElectionTimeoutMilliseconds: election,
                    reconcileIntervalSeconds: 5))
            #expect(b.leaderLossTerms.map(\.name) == ["leaderElection", "leaseExtension"])
            // Up to two election timeouts before a new leader, then one more on every lease.
            #expect(b.leaderLossTerms.map(\.milliseconds) == [2 * election, election])
            #expect(b.worstCaseLeaderLostMilliseconds == b.worstCaseMilliseconds + 3 * election)
            #expect(b.worstCaseLeaderLostMilliseconds > b.worstCaseMilliseconds)
        }
    }

    @Test func etcdRaisesATTLBelowItsMinimumAndTheBudgetCountsWhatItGrants() throws {
        #expect(RecoveryBudget.minimumTTLSeconds(heartbeatMilliseconds: 100, electionTimeoutMilliseconds: 1000) == 2)
        #expect(RecoveryBudget.minimumTTLSeconds(heartbeatMilliseconds: 200, electionTimeoutMilliseconds: 2000) == 3)
        #expect(RecoveryBudget.minimumTTLSeconds(heartbeatMilliseconds: 250, electionTimeoutMilliseconds: 2500) == 4)
        // Counted in whole heartbeats: 1050 / 100 is 10 ticks, 15 heartbeats, 1.5 s.
        #expect(RecoveryBudget.minimumTTLSeconds(heartbeatMilliseconds: 100, electionTimeoutMilliseconds: 1050) == 2)
        var asked = RecoveryBudget.Settings.testbed
        asked.leaseTTLSeconds = 2
        let b = try RecoveryBudget(asked)
        #expect(b.grantedTTLSeconds == 3)
        #expect(b.terms.first?.milliseconds == 3000)
        #expect(b.terms.first?.why.contains("raised by etcd to its minimum 3 s") == true)
    }

    @Test func aWatchNoticesAtOnce() throws {
        var s = RecoveryBudget.Settings.testbed
        s.notice = .watch
        let b = try RecoveryBudget(s)
        #expect(b.terms.first { $0.name == "notice" }?.milliseconds == 0)
        #expect(b.worstCaseMilliseconds == Self.testbed.worstCaseMilliseconds - RecoveryBudget.pollMilliseconds)
        s.notice = .reconcile
        #expect(try RecoveryBudget(s).worstCaseMilliseconds == b.worstCaseMilliseconds + 5000)
    }

    @Test func theSelfFenceComesTheMarginBeforeTheLeaseCanExpire() throws {
        let f = Self.testbed.selfFence
        #expect(f.afterMilliseconds == 2000)
        #expect(f.marginMilliseconds == 1000)
        #expect(f.renewalsBeforeFence == 1)
        #expect(f.watchdogAtMostMilliseconds == 1000)
        let daemon = try RecoveryBudget(.daemonDefaults)
        #expect(daemon.renewalPeriodMilliseconds == 3333)
        #expect(daemon.selfFence.afterMilliseconds == 9000)
        #expect(daemon.selfFence.renewalsBeforeFence == 2)
        #expect(daemon.selfFence.watchdogAtMostMilliseconds == 5667)
        // 10 s TTL, 0.5 s expiry scan, 0.5 s poll, 0.5 s fencing, 1 s restart.
        #expect(daemon.worstCaseMilliseconds == 12_500)
    }

    /// The detection terms bound what was measured on three namespace members at a 100 ms
    /// heartbeat and a 1 s election timeout (`shared/notes/multinode.md`, max of 20 runs).
    @Test func theDetectionTermsBoundWhatWasMeasured() throws {
        let measuredMax: [Int: (holder: Int, withLeader: Int)] = [2: (2400, 5200), 3: (3430, 6240), 5: (5440, 8170)]
        for (ttl, measured) in measuredMax {
            let b = try RecoveryBudget(
                .init(
                    leaseTTLSeconds: ttl, etcdHeartbeatMilliseconds: 100, etcdElectionTimeoutMilliseconds: 1000,
                    reconcileIntervalSeconds: 5))
            let detection = b.terms.filter { ["leaseTTL", "expiryScan"].contains($0.name) }.map(\.milliseconds)
                .reduce(0, +)
            #expect(detection >= measured.holder)
            #expect(detection + b.leaderLossTerms.map(\.milliseconds).reduce(0, +) >= measured.withLeader)
        }
    }

    @Test func timersThatCannotWorkAreRefusedInOneLine() {
        var tooFewHeartbeats = RecoveryBudget.Settings.testbed
        tooFewHeartbeats.etcdElectionTimeoutMilliseconds = 900
        #expect(throws: ModelError.self) { try RecoveryBudget(tooFewHeartbeats) }
        var neverNoticed = RecoveryBudget.Settings.daemonDefaults
        neverNoticed.notice = .reconcile
        neverNoticed.reconcileIntervalSeconds = 0
        #expect(throws: ModelError.self) { try RecoveryBudget(neverNoticed) }
        var watched = neverNoticed
        watched.notice = .watch
        #expect(throws: Never.self) { try RecoveryBudget(watched) }
        var margin = RecoveryBudget.Settings.testbed
        margin.selfFenceMarginMilliseconds = 2500
        do {
            _ = try RecoveryBudget(margin)
            Issue.record("a margin past the first renewal was accepted")
        } catch {
            #expect(!error.description.contains("\n"))
            #expect(error.description.contains("self-fence point"))
        }
    }

    @Test func theDaemonPresetIsWhatVcdConfiguresByDefault() {
        let vcd = DaemonConfiguration()
        let preset = RecoveryBudget.Settings.daemonDefaults
        #expect(preset.leaseTTLSeconds == vcd.leaseTTLSeconds)
        #expect(preset.reconcileIntervalSeconds == vcd.reconcileIntervalSeconds)
    }

    @Test func theTestbedPresetIsWhatTheTestbedScriptConfigures() throws {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("scripts/testbed.sh")
        let text = try String(contentsOf: script, encoding: .utf8)
        func value(_ pattern: String) -> Int? {
            guard let range = text.range(of: pattern, options: .regularExpression) else { return nil }
            return Int(text[range].split(whereSeparator: { !$0.isNumber }).last ?? "")
        }
        let preset = RecoveryBudget.Settings.testbed
        #expect(value(#"etcd_heartbeat=\$\{[A-Z_]+:-[0-9]+\}"#) == preset.etcdHeartbeatMilliseconds)
        #expect(value(#"etcd_election=\$\{[A-Z_]+:-[0-9]+\}"#) == preset.etcdElectionTimeoutMilliseconds)
        #expect(value(#"\nleaseTTLSeconds: [0-9]+"#) == preset.leaseTTLSeconds)
        #expect(value(#"\nreconcileIntervalSeconds: [0-9]+"#) == preset.reconcileIntervalSeconds)
    }
}
