import Foundation
import Testing
import VCModel

/// What a person sees when libvirt fails, restarts or hangs. These tests restart and
/// stop the shared libvirtd (`make daemons`), so they run one at a time, and each leaves
/// libvirtd running and answering on every exit path.
@Suite(.serialized) struct LibvirtFailureTests {
    @Test(.timeLimit(.minutes(10)))
    func aLibvirtErrorReachesTheUserInLibvirtsOwnWords() async throws {
        try await Testbed.with { bed in
            try await bed.importTiny()
            let name = "lm-\(bed.id)"
            try await bed.createOneTinyVMCluster(name)
            // The suspend writes the memory image under this name first (StepRunner.save):
            // a directory there makes libvirt's save fail, with libvirt's reason.
            let partial = "\(bed.poolPath)/saves/\(name)/\(name)-1.save.partial"
            try FileManager.default.createDirectory(atPath: partial, withIntermediateDirectories: true)
            let failed = try await bed.vc(["cluster", "suspend", name])
            #expect(failed.status == 1, "\(failed)")
            let reason = failed.stderr.split(whereSeparator: \.isNewline).last.map(String.init) ?? ""
            #expect(reason.contains("virDomainSaveFlags(\(name)-1)"), "\(failed)")
            #expect(reason.contains(partial) && reason.contains("Is a directory"), "\(failed)")
            #expect(!reason.contains("unknown libvirt error"), "\(failed)")

            try FileManager.default.removeItem(atPath: partial)
            let suspended = try await bed.vc(["cluster", "suspend", name])
            #expect(suspended.status == 0, "\(suspended)")
            let destroyed = try await bed.vc(["cluster", "destroy", name])
            #expect(destroyed.status == 0, "\(destroyed)")
        }
    }

    @Test(.timeLimit(.minutes(10)))
    func vcdCarriesOnAfterLibvirtdRestartsBetweenTwoCommands() async throws {
        try await Testbed.with { bed in
            try await bed.importTiny()
            let name = "lr-\(bed.id)"
            try await bed.createOneTinyVMCluster(name)
            try await SharedLibvirtd.keepingItRunning {
                try await SharedLibvirtd.restart()
            }
            // vcd's connection died with the old libvirtd; the next call makes a new one.
            let shown = try await bed.vc(["cluster", "show", name])
            #expect(shown.status == 0, "\(shown)")
            let status = try await bed.vcJSON(ClusterStatus.self, ["cluster", "show", name])
            #expect(status.vms.map(\.domain) == ["running"], "QEMU outlives a libvirtd restart: \(status.vms)")
            let destroyed = try await bed.vc(["cluster", "destroy", name])
            #expect(destroyed.status == 0, "\(destroyed)")
        }
    }

    @Test(.timeLimit(.minutes(10)))
    func aHungLibvirtdFailsACommandWithinTheBoundAndTheNextOneWorksAfterwards() async throws {
        let bound = 8
        try await Testbed.with(hooks: "libvirtCallTimeoutSeconds: \(bound)") { bed in
            try await bed.importTiny()
            let name = "lh-\(bed.id)"
            try await bed.createOneTinyVMCluster(name)
            let pid = try SharedLibvirtd.pid()
            var hung = CommandResult(status: -1, stdout: "", stderr: "")
            var waited = Duration.zero
            try await SharedLibvirtd.keepingItRunning {
                // SIGSTOP: alive but silent, as a libvirtd stuck on a lock or a dead mount.
                kill(pid, SIGSTOP)
                let started = ContinuousClock.now
                hung = try await bed.vc(["cluster", "show", name])
                waited = ContinuousClock.now - started
                kill(pid, SIGCONT)
            }
            #expect(hung.status == 5, "\(hung)")
            #expect(hung.stderr.split(whereSeparator: \.isNewline).count == 1, "\(hung)")
            #expect(hung.stderr.hasPrefix("vc: libvirtd is not answering"), "\(hung)")
            #expect(hung.stderr.contains("within \(bound) s"), "\(hung)")
            #expect(waited >= .seconds(bound - 1) && waited < .seconds(bound + 10), "waited \(waited)")

            let shown = try await bed.vcJSON(ClusterStatus.self, ["cluster", "show", name])
            #expect(shown.vms.map(\.domain) == ["running"], "\(shown.vms)")
            let destroyed = try await bed.vc(["cluster", "destroy", name])
            #expect(destroyed.status == 0, "\(destroyed)")
        }
    }
}

extension Testbed {
    /// A running 1-VM cluster of the tiny image, as small as a VM gets.
    func createOneTinyVMCluster(_ name: String) async throws {
        let r = try await vc(["cluster", "create", name, "--image", "tiny", "--vms", "1", "--memory", "128M"])
        guard r.status == 0 else { throw TestbedError.startFailed("vc cluster create \(name): \(r)") }
    }
}

/// The libvirtd every test shares, as `scripts/daemons.sh` starts it.
enum SharedLibvirtd {
    static let pidFile = "/var/lib/peerless/daemons/libvirtd.pid"

    static func pid() throws -> pid_t {
        let text = try String(contentsOfFile: pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        guard let pid = pid_t(text), pid > 1 else { throw TestbedError.startFailed("no libvirtd pid in \(pidFile)") }
        return pid
    }

    static func answers() async -> Bool {
        (try? await sh("virsh", ["-c", "qemu:///system", "version"]).status) == 0
    }

    /// Gone, or a zombie its parent has not reaped yet.
    static func hasExited(_ pid: pid_t) -> Bool {
        guard kill(pid, 0) == 0 else { return true }
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        return stat.split(separator: ")").last?.split(separator: " ").first == "Z"
    }

    /// Stops libvirtd with SIGTERM, waits until it is gone, starts it again and waits
    /// until it answers. Its QEMU processes keep running meanwhile.
    static func restart() async throws {
        let old = try pid()
        kill(old, SIGTERM)
        _ = try await eventually("libvirtd \(old) to exit", timeout: .seconds(60), every: .milliseconds(100)) {
            (hasExited(old) ? true : nil, "still running")
        }
        try await start()
    }

    static func start() async throws {
        let r = try await sh("libvirtd", ["-d", "-p", pidFile])
        guard r.status == 0 else { throw TestbedError.startFailed("libvirtd: \(r)") }
        _ = try await eventually("libvirtd to answer", timeout: .seconds(60), every: .milliseconds(200)) {
            (await answers() ? true : nil, "virsh version fails")
        }
    }

    /// Runs `body`; whatever happens, libvirtd runs and answers afterwards.
    static func keepingItRunning(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch {
            await revive()
            throw error
        }
        await revive()
    }

    private static func revive() async {
        if let pid = try? pid() { kill(pid, SIGCONT) }
        if await answers() { return }
        if let pid = try? pid(), !hasExited(pid) {
            // Still stopping: let it finish before a new one takes its socket.
            _ = try? await eventually("libvirtd \(pid) to exit", timeout: .seconds(60)) {
                (hasExited(pid) ? true : nil, "still running")
            }
        }
        if await answers() { return }
        try? await start()
    }
}
