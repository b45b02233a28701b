import Foundation
import Testing
import VCModel

/// vcd speaks systemd's notify protocol: READY=1 only once it serves and holds its lease,
/// WATCHDOG=1 at half the interval systemd asks for, STOPPING=1 on SIGTERM. The test plays
/// systemd's side: a datagram socket in NOTIFY_SOCKET.
@Suite(.serialized) struct SystemdNotifyTests {
    @Test(.timeLimit(.minutes(5)))
    func readyOnlyWhenServingThenWatchdogPingsThenStopping() async throws {
        let bed = Testbed()
        try FileManager.default.createDirectory(atPath: bed.root, withIntermediateDirectories: true)
        let socket = try NotifySocket(path: "\(bed.root)/notify.sock")
        var vcd: ChildProcess?
        do {
            try await bed.startTGTD()
            try bed.configuration(hooks: "", accelerator: "tcg").write(
                toFile: bed.configPath, atomically: true, encoding: .utf8)
            vcd = try ChildProcess(
                "\(Build.binDirectory)/vcd", ["-c", bed.configPath], log: bed.logPath,
                environment: ["NOTIFY_SOCKET": socket.path, "WATCHDOG_USEC": "400000"])
            try await check(bed, socket, vcd!)
        } catch {
            bed.dumpLog()
            vcd?.stop(SIGKILL)
            await cleanUp(bed, socket)
            throw error
        }
        await cleanUp(bed, socket)
    }

    private func check(_ bed: Testbed, _ socket: NotifySocket, _ vcd: ChildProcess) async throws {
        var messages: [String] = []
        let ready = try await eventually("READY=1", timeout: .seconds(60), every: .milliseconds(50)) {
            messages += socket.drain()
            return (messages.first { $0.contains("READY=1") }, "\(messages)")
        }
        // When systemd hears READY=1, the API already answers.
        let answered = try await bed.vc(["node", "list"])
        #expect(answered.status == 0, "\(answered)")
        #expect(ready.contains("STATUS=serving on 127.0.0.1:\(bed.apiPort)"), "\(ready)")

        // Pings at about half of 400 ms: expect several within 1.5 s.
        messages = []
        try await Task.sleep(for: .milliseconds(1500))
        messages += socket.drain()
        let pings = messages.filter { $0 == "WATCHDOG=1" }.count
        #expect(pings >= 4, "\(messages)")

        vcd.stop(SIGTERM)
        messages += socket.drain()
        #expect(messages.contains("STOPPING=1"), "\(messages)")
    }

    private func cleanUp(_ bed: Testbed, _ socket: NotifySocket) async {
        socket.close()
        try? await bed.stopTGTD()
        _ = try? await sh("umount", [bed.poolPath])
        _ = try? await sh("etcdctl", ["del", "--prefix", bed.prefix])
        try? FileManager.default.removeItem(atPath: bed.root)
    }
}

/// The receiving end of sd_notify: a bound Unix datagram socket.
final class NotifySocket {
    let path: String
    private let fd: Int32

    init(path: String) throws {
        self.path = path
        unlink(path)
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { buf in
            for (i, b) in path.utf8.enumerated() where i < buf.count - 1 { buf[i] = b }
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard rc == 0 else { throw TestbedError.startFailed("bind \(path): \(String(cString: strerror(errno)))") }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    /// Every message received so far.
    func drain() -> [String] {
        var out: [String] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { break }
            out.append(String(decoding: buf[0..<n], as: UTF8.self))
        }
        return out
    }

    func close() {
        Glibc.close(fd)
        unlink(path)
    }
}
