import Foundation
import Testing
import VCCatalog

/// Three etcd members of the test's own on loopback ports beside the machine's etcd
/// (2379/2380), each in a data directory of its own, stopped by whoever started them on
/// every exit path.
final class EtcdTrio {
    static let clientPorts = [23791, 23792, 23793]
    static let peerPorts = [23801, 23802, 23803]

    let root: String
    private var members: [ChildProcess?] = [nil, nil, nil]

    var endpoints: [String] { Self.clientPorts.map { "http://127.0.0.1:\($0)" } }

    init() throws {
        root = NSTemporaryDirectory() + "peerless-etcd-failover-\(UUID().uuidString.prefix(6).lowercased())"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    }

    static var etcdPath: String {
        let directories = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
        return (directories + ["/usr/bin", "/usr/local/bin"]).map { "\($0)/etcd" }
            .first { FileManager.default.isExecutableFile(atPath: $0) } ?? "/usr/bin/etcd"
    }

    /// Starts member `index` (0, 1, 2); `existing` restarts it on its old data directory.
    func start(_ index: Int, existing: Bool = false) throws {
        let name = "m\(index + 1)"
        let cluster = (0..<3).map { "m\($0 + 1)=http://127.0.0.1:\(Self.peerPorts[$0])" }.joined(separator: ",")
        members[index] = try ChildProcess(
            Self.etcdPath,
            [
                "--name", name, "--data-dir", "\(root)/\(name)",
                "--listen-client-urls", endpoints[index], "--advertise-client-urls", endpoints[index],
                "--listen-peer-urls", "http://127.0.0.1:\(Self.peerPorts[index])",
                "--initial-advertise-peer-urls", "http://127.0.0.1:\(Self.peerPorts[index])",
                "--initial-cluster", cluster, "--initial-cluster-state", existing ? "existing" : "new",
                "--initial-cluster-token", "peerless-failover-test",
                "--heartbeat-interval", "100", "--election-timeout", "1000", "--unsafe-no-fsync",
            ],
            log: "\(root)/\(name).log")
    }

    func kill(_ index: Int) {
        members[index]?.stop(SIGKILL)
        members[index] = nil
    }

    /// SIGSTOP: the member's kernel still takes connections, but nothing answers them, as
    /// with a member cut off behind a network that drops its packets. `stopAll` kills it.
    func pause(_ index: Int) {
        if let pid = members[index]?.pid { Foundation.kill(pid, SIGSTOP) }
    }

    /// The member that leads now, as every member that answers sees it.
    func leader() async throws -> Int? {
        let r = try await sh(
            "etcdctl", ["--endpoints", endpoints.joined(separator: ","), "endpoint", "status", "-w", "fields"])
        let lines = r.stdout.split(separator: "\n").map(String.init)
        func values(_ field: String) -> [String] {
            lines.filter { $0.hasPrefix("\"\(field)\" :") }.map {
                $0.split(separator: ":", maxSplits: 1)[1].trimmingCharacters(in: .whitespaces)
                    .trimmingCharacters(in: CharacterSet(charactersIn: "\""))
            }
        }
        let ids = values("MemberID")
        let leaders = Set(values("Leader"))
        let urls = values("Endpoint")
        guard leaders.count == 1, let lead = leaders.first, let at = ids.firstIndex(of: lead), at < urls.count else {
            return nil
        }
        return endpoints.firstIndex(of: urls[at])
    }

    /// Makes member `index` the leader.
    /// Retried while the members elect or a restarted one catches up: its status, or the
    /// move itself, is refused meanwhile.
    func moveLeader(to index: Int) async throws {
        let _: Bool = try await eventually(
            "member \(index + 1) to take the lead", timeout: .seconds(20), every: .milliseconds(500)
        ) {
            let r = try await sh("etcdctl", ["--endpoints", endpoints[index], "endpoint", "status", "-w", "fields"])
            let line = r.stdout.split(separator: "\n").first { $0.hasPrefix("\"MemberID\" :") }
            guard let line, let id = UInt64(line.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) else {
                return (nil, "status: \(r)")
            }
            let moved = try await sh(
                "etcdctl", ["--endpoints", endpoints.joined(separator: ","), "move-leader", String(id, radix: 16)])
            return (moved.status == 0 ? true : nil, "move-leader: \(moved)")
        }
    }

    func dumpLogs() {
        for name in ["m1", "m2", "m3"] { print("---- etcd \(name) ----\n\(tail("\(root)/\(name).log", lines: 15))") }
    }

    /// Kills whatever still runs and removes the data directories.
    func stopAll() {
        for index in members.indices { kill(index) }
        try? FileManager.default.removeItem(atPath: root)
    }
}

/// A catalog client that lists every etcd member carries on when one dies, says in one line
/// that the quorum is lost when a second one dies, and serves again once they are back.
@Suite(.serialized) struct EtcdFailoverTests {
    static let key = "/peerless-failover-test/a"

    @Test(.timeLimit(.minutes(3)))
    func aClientOfThreeMembersRidesOutOneDeadMemberAndNamesTheLostQuorum() async throws {
        let trio = try EtcdTrio()
        defer { trio.stopAll() }
        do {
            try await ridesOutOneDeadMemberAndNamesTheLostQuorum(trio)
        } catch {
            trio.dumpLogs()
            throw error
        }
    }

    /// Starts the three members and returns a client of all three once they serve (the
    /// key holds "one" then).
    static func serving(_ trio: EtcdTrio) async throws -> EtcdClient {
        for index in 0..<3 { try trio.start(index) }
        let client = EtcdClient(endpoints: trio.endpoints)
        _ = try await eventually("the three members to serve", timeout: .seconds(30)) {
            do {
                try await client.put(Self.key, Array("one".utf8))
                return (true, "")
            } catch {
                return (nil, "\(error)")
            }
        }
        return client
    }

    func ridesOutOneDeadMemberAndNamesTheLostQuorum(_ trio: EtcdTrio) async throws {
        for port in EtcdTrio.clientPorts + EtcdTrio.peerPorts {
            let r = try await sh("ss", ["-Htln", "sport", "= :\(port)"])
            try #require(r.stdout.isEmpty, "port \(port) is taken: \(r.stdout)")
        }
        let client = try await Self.serving(trio)
        #expect(try await client.get(Self.key)?.value == Array("one".utf8))
        let lease = try await client.grantLease(ttlSeconds: 30)

        // The worst case for the first member to die: the preferred one, and the leader, so
        // that a write sent to a follower right after goes to a leader that is gone.
        let first = try #require(trio.endpoints.firstIndex(of: client.endpoint))
        try await trio.moveLeader(to: first)
        _ = try await eventually("member \(first + 1) to lead", timeout: .seconds(10), every: .milliseconds(200)) {
            let leader = try await trio.leader()
            return (leader == first ? true : nil, "leader: \(leader.map { "m\($0 + 1)" } ?? "none")")
        }
        trio.kill(first)
        let killed = ContinuousClock.now
        try await client.put(Self.key, Array("two".utf8))
        let delay = ContinuousClock.now - killed
        print("first put after killing the preferred leader \(trio.endpoints[first]) took \(delay)")
        #expect(delay < .milliseconds(2500), "the first request after the kill took \(delay)")
        #expect(client.endpoint != trio.endpoints[first])
        #expect(try await client.get(Self.key)?.value == Array("two".utf8))
        #expect(
            try await client.txn(
                [.value(Self.key, equals: Array("two".utf8))], success: [.put(Self.key, Array("three".utf8))]))
        #expect(try await client.txn([.value(Self.key, equals: Array("two".utf8))], success: []) == false)
        #expect(try await client.keepAlive(lease: lease.id) > 0)

        // A second death leaves one member of three: no quorum. The put ends within the
        // request timeout and says so in one line.
        let second = try #require(trio.endpoints.firstIndex(of: client.endpoint))
        trio.kill(second)
        let started = ContinuousClock.now
        let error = await #expect(throws: CatalogError.self) { try await client.put(Self.key, Array("four".utf8)) }
        let waited = ContinuousClock.now - started
        print("put without quorum failed after \(waited): \(error.map { "\($0)" } ?? "-")")
        #expect(waited < .seconds(5) + .milliseconds(500), "the put without quorum took \(waited)")
        let line = error?.description ?? ""
        #expect(line.contains("no quorum") && line.contains("1 of 3 etcd members"), "\(line)")
        #expect(!line.contains("\n"))
        #expect(error?.isRetryable == true)

        // Back on their old data directories, the members serve again.
        try trio.start(first, existing: true)
        try trio.start(second, existing: true)
        _ = try await eventually("the catalog to serve again", timeout: .seconds(60)) {
            do {
                try await client.put(Self.key, Array("five".utf8))
                return (true, "")
            } catch {
                return (nil, "\(error)")
            }
        }
        #expect(try await client.get(Self.key)?.value == Array("five".utf8))

        // The common case: the preferred member dies while another one leads. Its refused
        // connection costs nothing and the next member serves at once.
        let third = try #require(trio.endpoints.firstIndex(of: client.endpoint))
        let leader = (third + 1) % 3
        try await trio.moveLeader(to: leader)
        _ = try await eventually("member \(leader + 1) to lead", timeout: .seconds(10), every: .milliseconds(200)) {
            let now = try await trio.leader()
            return (now == leader ? true : nil, "leader: \(now.map { "m\($0 + 1)" } ?? "none")")
        }
        trio.kill(third)
        let killedFollower = ContinuousClock.now
        try await client.put(Self.key, Array("six".utf8))
        let followerDelay = ContinuousClock.now - killedFollower
        print("first put after killing the preferred follower \(trio.endpoints[third]) took \(followerDelay)")
        #expect(followerDelay < .seconds(1), "the first request after the kill took \(followerDelay)")
    }

    /// A node's lease renewal is bounded by its lease's deadline. With its preferred member
    /// cut off (it takes the connection and never answers), the renewal must still reach
    /// a live member within that deadline: waiting the preferred one out first would leave
    /// no time for the others, and the lease would expire while two members serve. With
    /// every member cut off, it ends by the deadline all the same.
    @Test(.timeLimit(.minutes(2)))
    func aRenewalBoundedByItsDeadlineIsServedByALiveMemberWhenThePreferredOneHangs() async throws {
        let trio = try EtcdTrio()
        defer { trio.stopAll() }
        do {
            let client = try await Self.serving(trio)
            let lease = try await client.grantLease(ttlSeconds: 30)
            let preferred = try #require(trio.endpoints.firstIndex(of: client.endpoint))
            // A follower, so that the other two keep their quorum and leader.
            try await trio.moveLeader(to: (preferred + 1) % 3)
            trio.pause(preferred)

            let deadline = ContinuousClock.now + .seconds(1)
            let left = try await client.keepAlive(lease: lease.id, by: deadline)
            let late = ContinuousClock.now - deadline
            #expect(left > 0)
            #expect(late < .milliseconds(200), "the renewal ended \(late) after its deadline")
            #expect(client.endpoint != trio.endpoints[preferred])

            for index in 0..<3 where index != preferred { trio.pause(index) }
            let last = ContinuousClock.now + .seconds(1)
            await #expect(throws: CatalogError.self) { try await client.keepAlive(lease: lease.id, by: last) }
            let over = ContinuousClock.now - last
            #expect(over < .milliseconds(200), "with every member cut off the renewal ended \(over) after its deadline")
        } catch {
            trio.dumpLogs()
            throw error
        }
    }
}
