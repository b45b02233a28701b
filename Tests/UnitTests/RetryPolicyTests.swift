import Testing

@testable import VCCatalog

/// An etcd leader change makes a write fail for a second or two; the outcome of an
/// operation must still be recorded, while a lost compare-and-swap is never sent again.
@Suite struct RetryPolicyTests {
    static let policy = RetryPolicy(attempts: 4, firstDelay: .milliseconds(100))
    static let leaderChanged = CatalogError.rejected(
        endpoint: "http://etcd", status: 503, message: "etcdserver: leader changed")

    @Test func aWriteFailingDuringALeaderChangeIsRetriedUntilItLands() async throws {
        var calls = 0
        var slept: [Duration] = []
        var heard: [Int] = []
        let value = try await Self.policy.run(
            sleep: { slept.append($0) }, onRetry: { _, attempt in heard.append(attempt) }
        ) { () async throws(CatalogError) -> String in
            calls += 1
            if calls <= 2 { throw Self.leaderChanged }
            return "landed"
        }
        #expect(value == "landed")
        #expect(calls == 3)
        #expect(heard == [1, 2])
        #expect(slept == [.milliseconds(100), .milliseconds(200)])
    }

    @Test func aLostCompareAndSwapIsNotRetried() async {
        var calls = 0
        var slept: [Duration] = []
        await #expect {
            try await Self.policy.run(sleep: { slept.append($0) }) { () async throws(CatalogError) in
                calls += 1
                throw .conflict(key: "/peerless/clusters/a")
            }
        } throws: { error in
            guard case CatalogError.conflict = error else { return false }
            return true
        }
        #expect(calls == 1)
        #expect(slept.isEmpty)
    }

    @Test func attemptsAreBoundedAndTheLastErrorIsThrown() async {
        var calls = 0
        var slept: [Duration] = []
        await #expect {
            try await Self.policy.run(sleep: { slept.append($0) }) { () async throws(CatalogError) in
                calls += 1
                throw .unreachable(endpoint: "http://etcd", reason: "connection refused \(calls)")
            }
        } throws: { error in
            guard case CatalogError.unreachable(_, let reason) = error else { return false }
            return reason == "connection refused 4"
        }
        #expect(calls == 4)
        #expect(slept == [.milliseconds(100), .milliseconds(200), .milliseconds(400)])
    }

    @Test(arguments: [
        CatalogError.rejected(endpoint: "e", status: 503, message: "etcdserver: no leader"),
        .rejected(
            endpoint: "e", status: 503,
            message: "etcdserver: request timed out, possibly due to previous leader failure"),
        .rejected(endpoint: "e", status: 504, message: "context deadline exceeded"),
        .rejected(endpoint: "e", status: 429, message: "etcdserver: too many requests"),
        .rejected(endpoint: "e", status: 500, message: "rpc error: etcdserver: leader changed"),
        // A member just removed from the cluster, on its way out.
        .rejected(endpoint: "e", status: 500, message: "raft: stopped"),
        .unreachable(endpoint: "e", reason: "connection refused"),
    ])
    func whatEtcdAnswersDuringAnElectionIsRetryable(_ error: CatalogError) {
        #expect(error.isRetryable)
    }

    @Test(arguments: [
        CatalogError.rejected(endpoint: "e", status: 429, message: "etcdserver: mvcc: database space exceeded"),
        .rejected(endpoint: "e", status: 400, message: "etcdserver: duplicate key given in txn request"),
        .conflict(key: "k"),
        .corrupt(key: "k", reason: "not JSON"),
        .alreadyExists(kind: "cluster", name: "a"),
        .notFound(kind: "cluster", name: "a"),
        .removed(node: "n2"), .unregistered(node: "n2"),
    ])
    func whatRetryingCannotFixIsNotRetryable(_ error: CatalogError) {
        #expect(!error.isRetryable)
    }
}
