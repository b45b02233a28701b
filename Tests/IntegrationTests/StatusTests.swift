import Foundation
import Testing
import VCModel

/// `vcnode status` is what a technician trusts: a count it could not take must say so,
/// never look like an empty, healthy node.
@Suite(.serialized) struct StatusTests {
    @Test(.timeLimit(.minutes(5)))
    func statusSaysUnknownInsteadOfZeroWhenEtcdStops() async throws {
        try await Testbed.withOwnEtcd { bed, etcd in
            let healthy = try await bed.vcnodeStatus()
            #expect(healthy.clusters == 0, "\(healthy)")
            #expect(healthy.committedMemoryMiB == 0, "\(healthy)")
            #expect(healthy.daemons.first { $0.name == "etcd" }?.healthy == true, "\(healthy.daemons)")

            etcd.stop(SIGTERM)

            let json = try await bed.vcnode(["status", "--output", "json"])
            #expect(json.status == 5, "\(json)")
            let object = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
            // Present and null: a script reading the field learns that it is unknown.
            #expect(object?["clusters"] is NSNull, "\(json.stdout)")
            #expect(object?["committedMemoryMiB"] is NSNull, "\(json.stdout)")
            #expect(object?["runningVMs"] is NSNumber, "libvirtd still answers: \(json.stdout)")
            let status = try await bed.vcnodeStatus()
            #expect(status.clusters == nil && status.committedMemoryMiB == nil, "\(status)")
            #expect(status.daemons.first { $0.name == "etcd" }?.healthy == false, "\(status.daemons)")

            let table = try await bed.vcnode(["status"])
            #expect(table.status == 5, "\(table)")
            let clusters = table.stdout.split(whereSeparator: \.isNewline).first { $0.hasPrefix("Clusters") } ?? ""
            #expect(clusters.contains("unknown (etcd is not answering)"), "\(table)")
            #expect(!clusters.contains(" 0,"), "\(table)")
            #expect(table.stdout.contains("committed unknown (etcd is not answering)"), "\(table)")
        }
    }
}

/// An etcd of one test's own, on random loopback ports with its data under the testbed
/// root, so that stopping it disturbs no other test.
final class PrivateEtcd {
    let clientURL: String
    let process: ChildProcess

    init(root: String, name: String) async throws {
        let client = Int.random(in: 40000...48999)
        let peer = client + 1000
        clientURL = "http://127.0.0.1:\(client)"
        let peerURL = "http://127.0.0.1:\(peer)"
        process = try ChildProcess(
            "/usr/bin/etcd",
            [
                "--name", name, "--data-dir", "\(root)/etcd", "--listen-client-urls", clientURL,
                "--advertise-client-urls", clientURL, "--listen-peer-urls", peerURL,
                "--initial-advertise-peer-urls", peerURL, "--initial-cluster", "\(name)=\(peerURL)",
            ], log: "\(root)/etcd.log")
        let url = clientURL
        let process = process
        _ = try await eventually("the private etcd to answer", timeout: .seconds(30), every: .milliseconds(200)) {
            guard process.isRunning else { throw TestbedError.startFailed("etcd exited: \(tail("\(root)/etcd.log"))") }
            let r = try await sh("etcdctl", ["--endpoints", url, "endpoint", "health"])
            return (r.status == 0 ? true : nil, r.stderr)
        }
    }

    func stop(_ signal: Int32) { process.stop(signal) }
}

extension Testbed {
    /// Runs `body` with a testbed whose vcd uses a private etcd; tears both down always.
    static func withOwnEtcd(_ body: (Testbed, PrivateEtcd) async throws -> Void) async throws {
        let bed = Testbed()
        var etcd: PrivateEtcd?
        do {
            try FileManager.default.createDirectory(atPath: bed.root, withIntermediateDirectories: true)
            let own = try await PrivateEtcd(root: bed.root, name: bed.node)
            etcd = own
            try await bed.startTGTD()
            try bed.configuration(hooks: "", accelerator: "tcg", etcdEndpoint: own.clientURL).write(
                toFile: bed.configPath, atomically: true, encoding: .utf8)
            try await bed.startVCD()
            try await body(bed, own)
        } catch {
            bed.dumpLog()
            await bed.teardown()
            etcd?.stop(SIGKILL)
            throw error
        }
        // vcd goes first: it would log every lease renewal that fails meanwhile.
        await bed.teardown()
        etcd?.stop(SIGTERM)
    }

    func vcnode(_ args: [String]) async throws -> CommandResult {
        try await sh("\(Build.binDirectory)/vcnode", args + ["--endpoint", "unix://\(socket)"])
    }
}
