// VCHost: runs host programs (ip, nft, dnsmasq, qemu-img, mkfs, mount) through
// swift-subprocess: no shell, arguments as an array, bounded output, a deadline.
// It knows nothing about what the programs are for.
import Foundation
import Logging
import Subprocess
import Synchronization

#if canImport(System)
    import System
#else
    import SystemPackage
#endif

/// A host program that could not be run or did not succeed.
public struct CommandError: Error, Sendable, CustomStringConvertible {
    public var command: [String]
    /// The exit status, or nil when it could not be started or was stopped.
    public var status: Int32?
    /// What it printed on standard error (bounded).
    public var output: String

    public var program: String { command.first ?? "?" }

    /// The program's own last words, which is what a person needs to act on.
    public var reason: String {
        let lines = output.split(separator: "\n").map { $0.trimmed }.filter { !$0.isEmpty }
        return lines.last ?? (status.map { "exit status \($0)" } ?? "could not run")
    }

    public var description: String { "\(program) failed: \(reason)" }
}

public struct CommandOutput: Sendable {
    public var stdout: String
    public var stderr: String
}

public enum HostCommand {
    /// Runs a program found on PATH and returns its output; throws `CommandError` when
    /// it exits non-zero, cannot start, or outlives `timeout`.
    @discardableResult
    public static func run(
        _ program: String, _ arguments: [String], timeout: Duration = .seconds(120), outputLimit: Int = 1 << 20,
        logger: Logger? = nil
    ) async throws(CommandError) -> CommandOutput {
        let command = [program] + arguments
        logger?.trace("run", metadata: ["command": "\(command.joined(separator: " "))"])
        let result: ExecutionResult<Void, StringOutput<UTF8>, StringOutput<UTF8>>
        do {
            result = try await withDeadline(timeout) {
                try await Subprocess.run(
                    executable(program), arguments: Arguments(arguments),
                    output: .string(limit: outputLimit), error: .string(limit: outputLimit))
            }
        } catch let e as CommandError {
            throw CommandError(command: command, status: nil, output: e.output)
        } catch {
            throw CommandError(command: command, status: nil, output: "\(error)")
        }
        let stdout = result.standardOutput
        let stderr = result.standardError
        guard case .exited(let code) = result.terminationStatus, code == 0 else {
            let status: Int32? = if case .exited(let code) = result.terminationStatus { code } else { nil }
            throw CommandError(command: command, status: status, output: stderr.isEmpty ? stdout : stderr)
        }
        return CommandOutput(stdout: stdout, stderr: stderr)
    }

    /// Like `run`, but reports whether it succeeded instead of throwing.
    public static func succeeds(_ program: String, _ arguments: [String], timeout: Duration = .seconds(30)) async
        -> Bool
    {
        do {
            try await run(program, arguments, timeout: timeout)
            return true
        } catch {
            return false
        }
    }

    private static let resolved = Mutex<[String: String]>([:])

    /// The program's absolute path, looked up on PATH once per process. Spawning by name
    /// costs a failed exec per PATH entry before the right one, every time (several ms
    /// per tgtadm call on a long PATH).
    static func executable(_ program: String) -> Executable {
        if program.hasPrefix("/") { return .path(FilePath(program)) }
        if let known = resolved.withLock({ $0[program] }) { return .path(FilePath(known)) }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin"
        for dir in path.split(separator: ":") {
            let candidate = "\(dir)/\(program)"
            if FileManager.default.isExecutableFile(atPath: candidate) {
                resolved.withLock { $0[program] = candidate }
                return .path(FilePath(candidate))
            }
        }
        return .name(program)
    }

    private static func withDeadline<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T)
        async throws -> T
    {
        try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await body() }
            group.addTask {
                try await Task.sleep(for: limit)
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let value = first else {
                throw CommandError(command: [], status: nil, output: "did not finish within \(limit)")
            }
            return value
        }
    }
}
