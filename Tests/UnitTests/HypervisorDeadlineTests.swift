import Glibc
import Libvirt
import Synchronization
import Testing

@testable import VCDaemon

/// A libvirt call that outlives its deadline: the caller is told at the deadline that
/// libvirtd does not answer, and vc shows that as "a daemon is down". libvirt's test
/// driver runs inside this process, so no libvirtd is needed; a body that sleeps stands
/// in for a call blocked on a hung one.
@Suite struct HypervisorDeadlineTests {
    final class Flag: Sendable {
        private let value = Mutex(false)
        func set() { value.withLock { $0 = true } }
        var isSet: Bool { value.withLock { $0 } }
    }

    @Test func aCallThatOutlivesItsDeadlineFailsAsUnansweredAtTheDeadline() async throws {
        let hypervisor = Hypervisor(uri: "test:///default", threads: 2)
        let started = ContinuousClock.now
        var caught: LibvirtError?
        do {
            try await hypervisor.run(timeout: .milliseconds(200)) { _ in _ = usleep(1_500_000) }
        } catch let error as LibvirtError {
            caught = error
        }
        let waited = ContinuousClock.now - started
        let error = try #require(caught)
        #expect(error.isUnanswered)
        #expect(waited < .seconds(1), "the caller waited \(waited), not until the call ended")
        #expect(error.message == "no answer from test:///default within 200 ms")

        let shown = DaemonError.from(error)
        #expect(shown.code == "unavailable")
        #expect(shown.description.hasPrefix("libvirtd is not answering (no answer from test:///default"))

        // The other thread still serves.
        #expect(try await hypervisor.run { try $0.libraryVersion() }.split(separator: ".").count == 3)
        try await hypervisor.shutdown()
    }

    @Test func aCallQueuedUntilItsCallerGaveUpIsNeverMade() async throws {
        let hypervisor = Hypervisor(uri: "test:///default", threads: 1)
        let blockerDone = Flag()
        let lateCallMade = Flag()
        await #expect(throws: LibvirtError.self) {
            try await hypervisor.run(timeout: .milliseconds(100)) { _ in
                usleep(800_000)
                blockerDone.set()
            }
        }
        // The only thread is still busy: this call waits in the queue past its deadline.
        await #expect(throws: LibvirtError.self) {
            try await hypervisor.run(timeout: .milliseconds(100)) { _ in lateCallMade.set() }
        }
        // One thread, first in first out: once this runs, the late call had its turn.
        try await hypervisor.run(timeout: .seconds(10)) { _ in }
        #expect(blockerDone.isSet)
        #expect(!lateCallMade.isSet)
        try await hypervisor.shutdown()
    }
}
