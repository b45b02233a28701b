/// How a catalog write rides out a passing etcd outage or leader change: it is sent again
/// after a doubling delay while its failure `isRetryable`, and at most `attempts` times.
/// Only writes that recognise one of their own earlier attempts having landed may be
/// retried this way: a request that timed out may still have been applied.
public struct RetryPolicy: Sendable {
    public var attempts: Int
    public var firstDelay: Duration

    public init(attempts: Int, firstDelay: Duration) {
        self.attempts = attempts
        self.firstDelay = firstDelay
    }

    /// Six attempts over about 8 s (0.25 + 0.5 + 1 + 2 + 4): longer than an etcd election
    /// with the default 1 s election timeout, short enough for a client that waits.
    public static let catalogWrite = RetryPolicy(attempts: 6, firstDelay: .milliseconds(250))

    /// Runs `write` until it succeeds, fails for good or the attempts are spent, then
    /// returns its result or its last error. `sleep` waits between attempts (tests pass
    /// one that returns at once); `onRetry` hears each failure that will be retried.
    public func run<T>(
        sleep: (Duration) async -> Void = { try? await Task.sleep(for: $0) },
        onRetry: (CatalogError, _ attempt: Int) -> Void = { _, _ in },
        _ write: () async throws(CatalogError) -> T
    ) async throws(CatalogError) -> T {
        var delay = firstDelay
        var attempt = 1
        while true {
            do throws(CatalogError) {
                return try await write()
            } catch  where error.isRetryable && attempt < attempts {
                onRetry(error, attempt)
                await sleep(delay)
                delay *= 2
                attempt += 1
            }
        }
    }
}
