import Foundation
import Logging
import Testing
import VCModel

@testable import VCCatalog

/// The cluster mirror against a real etcd of the test's own: one member on loopback ports
/// 24791/24801 (not the machine's 2379, nor the failover test's 2379x), in a temporary
/// data directory, stopped and removed on every exit path. Fails where etcd is not
/// installed (`make test` installs it). Filter: `swift test --filter PrefixMirrorEtcdTests`.
@Suite(.serialized) struct PrefixMirrorEtcdTests {
    static let endpoint = "http://127.0.0.1:24791"

    /// The one etcd member this test starts.
    final class OwnEtcd {
        let root: String
        private var process: Process?

        init() throws {
            root = NSTemporaryDirectory() + "peerless-mirror-etcd-\(UUID().uuidString.prefix(6).lowercased())"
            try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        }

        static var path: String? {
            let directories = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
            return (directories + ["/usr/bin", "/usr/local/bin"]).map { "\($0)/etcd" }
                .first { FileManager.default.isExecutableFile(atPath: $0) }
        }

        /// Starts it, on the data directory of an earlier start if there was one.
        func start() throws {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: Self.path ?? "/usr/bin/etcd")
            p.arguments = [
                "--name", "mirror", "--data-dir", "\(root)/data", "--unsafe-no-fsync",
                "--listen-client-urls", PrefixMirrorEtcdTests.endpoint,
                "--advertise-client-urls", PrefixMirrorEtcdTests.endpoint,
                "--listen-peer-urls", "http://127.0.0.1:24801", "--initial-advertise-peer-urls",
                "http://127.0.0.1:24801", "--initial-cluster", "mirror=http://127.0.0.1:24801",
            ]
            if !FileManager.default.fileExists(atPath: "\(root)/etcd.log") {
                _ = FileManager.default.createFile(atPath: "\(root)/etcd.log", contents: nil)
            }
            let log = FileHandle(forWritingAtPath: "\(root)/etcd.log")
            log?.seekToEndOfFile()
            p.standardOutput = log
            p.standardError = log
            try p.run()
            process = p
        }

        func kill() {
            guard let p = process else { return }
            if p.isRunning { p.interrupt() }
            Foundation.kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            process = nil
        }

        func remove() {
            kill()
            try? FileManager.default.removeItem(atPath: root)
        }
    }

    /// Polls `check` until it holds, at most `timeout`; fails with what was last seen.
    static func eventually(
        _ what: String, timeout: Duration = .seconds(10), _ check: () async throws -> (Bool, String)
    ) async throws {
        let deadline = ContinuousClock.now + timeout
        var seen = "nothing"
        while ContinuousClock.now < deadline {
            do {
                let (ok, description) = try await check()
                if ok { return }
                seen = description
            } catch {
                seen = "\(error)"
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        Issue.record("\(what) did not happen within \(timeout); last seen: \(seen)")
        throw CancellationError()
    }

    static func summary(_ name: String, state: ClusterState = .running) -> ClusterSummary {
        let epoch = Date(timeIntervalSince1970: 0)
        return ClusterSummary(
            spec: .init(name: name, image: "i", vms: 1, vcpus: 1, memoryMiB: 128), state: state,
            network: .init(cidr: "10.0.1.0/24"), vms: [.init(name: "\(name)-1", node: "n1")], createdAt: epoch,
            updatedAt: epoch)
    }

    @Test func listingsFollowEveryWriteAndSurviveARestartOfEtcd() async throws {
        let (etcd, client, catalog) = try await Self.ownCatalog(prefix: "/mirror-test")
        defer { etcd.remove() }
        func put(_ name: String, _ state: ClusterState = .running) async throws {
            try await client.put(catalog.clusterKey(name), try catalog.encode(Self.summary(name, state: state)))
        }
        func names() async throws -> [String] { try await catalog.clusterSummaries().map(\.name) }

        try await put("a")
        try await put("b")
        var logger = Logger(label: "mirror-test")
        logger.logLevel = .critical
        let follower = Task { [logger] in await catalog.clusterMirror.follow(client, logger: logger) }
        defer { follower.cancel() }
        let listed = try await client.snapshot(prefix: "/mirror-test/clusters/").revision
        try await Self.eventually("the mirror to list") {
            let r = await catalog.clusterMirror.revision
            return (r >= listed, "revision \(r)")
        }

        // Each write is in the very next listing: the probe sees it, the listing waits
        // for the watch, or reads etcd; never staler.
        try await put("c")
        #expect(try await names() == ["a", "b", "c"])
        try await put("b", .suspended)
        #expect(try await catalog.clusterSummaries()[1].state == .suspended)
        try await client.delete(catalog.clusterKey("a"))
        #expect(try await names() == ["b", "c"])

        // Writes elsewhere move etcd's revision; the mirror still answers.
        let before = await catalog.clusterMirror.served
        for i in 0..<5 { try await client.put("/mirror-test/ops/x\(i)", Array("x".utf8)) }
        #expect(try await names() == ["b", "c"])
        #expect(try await names() == ["b", "c"])
        let after = await catalog.clusterMirror.served
        #expect(after.mirror - before.mirror == 2)
        #expect(after.etcd == before.etcd)

        // etcd killed: listings fail with what etcd said (not stale answers); once it
        // is back the watch lists again and follows.
        etcd.kill()
        await #expect(throws: CatalogError.self) { try await names() }
        try etcd.start()
        try await Self.eventually("etcd to answer again") { (try await client.get("/none") == nil, "") }
        try await put("d")
        #expect(try await names() == ["b", "c", "d"])
        try await Self.eventually("the watch to follow again") {
            try await put("e\(Int.random(in: 0..<1000))")
            let before = await catalog.clusterMirror.served
            _ = try await names()
            let after = await catalog.clusterMirror.served
            return (after.mirror > before.mirror, "served \(after)")
        }
        follower.cancel()
        await follower.value
    }
    /// The test's own etcd, started and answering, and a catalog under `prefix` on it; the
    /// caller removes it (`etcd.remove()`), which is done here when it does not answer.
    static func ownCatalog(prefix: String) async throws -> (OwnEtcd, EtcdClient, Catalog) {
        try #require(OwnEtcd.path != nil, "etcd is not installed: make test installs it (scripts/setup.sh)")
        let etcd = try OwnEtcd()
        do {
            try etcd.start()
            let client = EtcdClient(endpoint: endpoint, timeout: .seconds(2))
            try await eventually("etcd to answer") { (try await client.get("/none") == nil, "") }
            return (etcd, client, Catalog(etcd: client, prefix: prefix))
        } catch {
            etcd.remove()
            throw error
        }
    }

    static func node(_ name: String, machine: String?, api: String) -> NodeRecord {
        NodeRecord(
            name: name, initiator: "", api: api, capacity: NodeCapacity(node: name, cpus: 1, memoryMiB: 512),
            accelerator: Accelerator(kind: .tcg, reason: ""), version: "", startedAt: Date(timeIntervalSince1970: 0),
            roles: [.compute], machine: machine)
    }

    /// A second machine given a live node's name is refused, naming the holder; the same
    /// machine restarted within its TTL, a record of a machine unknown, and a name whose
    /// holder's lease ended are taken over; a removed name stays refused.
    @Test func aNodeNameHeldByAnotherLiveMachineIsRefused() async throws {
        let (etcd, client, catalog) = try await Self.ownCatalog(prefix: "/names-test")
        defer { etcd.remove() }
        func holder() async throws -> String? {
            guard let kv = try await client.get(catalog.nodeKey("n1")) else { return nil }
            let record: NodeRecord = try catalog.decode(kv)
            return record.machine
        }

        let first = try await client.grantLease(ttlSeconds: 30)
        try await catalog.register(Self.node("n1", machine: "a", api: "http://10.0.0.1:7070"), lease: first.id)
        let second = try await client.grantLease(ttlSeconds: 30)
        do {
            try await catalog.register(Self.node("n1", machine: "b", api: "http://10.0.0.2:7070"), lease: second.id)
            Issue.record("machine b took n1 while machine a holds it")
        } catch {
            #expect("\(error)".contains("node name n1 is in use by another machine"), "\(error)")
            #expect("\(error)".contains("http://10.0.0.1:7070"), "the refusal names the holder: \(error)")
        }
        #expect(try await holder() == "a")

        // Machine a's vcd restarted: a new lease, the same machine, taken over.
        let restarted = try await client.grantLease(ttlSeconds: 30)
        try await catalog.register(Self.node("n1", machine: "a", api: "http://10.0.0.1:7070"), lease: restarted.id)
        try await client.revoke(lease: first.id)
        #expect(try await holder() == "a", "revoking the old lease took the new registration with it")

        // Machine a gone (its lease ends): b takes the name.
        try await client.revoke(lease: restarted.id)
        try await catalog.register(Self.node("n1", machine: "b", api: "http://10.0.0.2:7070"), lease: second.id)
        #expect(try await holder() == "b")

        // A record written before machines were kept belongs to no one in particular.
        let n2 = try await client.grantLease(ttlSeconds: 30)
        try await catalog.register(Self.node("n2", machine: nil, api: "http://10.0.0.3:7070"), lease: n2.id)
        try await catalog.register(Self.node("n2", machine: "c", api: "http://10.0.0.4:7070"), lease: n2.id)

        // Removed stays removed, whoever asks.
        try await client.put(catalog.removedKey("n3"), Array("removed through test".utf8))
        do {
            try await catalog.register(Self.node("n3", machine: "d", api: "http://10.0.0.5:7070"), lease: n2.id)
            Issue.record("a removed name registered again")
        } catch {
            #expect("\(error)".contains("was removed from the cluster"), "\(error)")
        }
    }
}
