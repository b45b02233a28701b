// VCCommands: the `vc` and `vcnode` command trees. Each command parses and checks its
// arguments, calls vcd through VCClient, and renders the answer; nothing else.
import ArgumentParser
import Foundation
import VCClient
import VCModel

public enum OutputFormat: String, ExpressibleByArgument, CaseIterable, Sendable {
    case table, json
}

/// Options every command takes.
public struct GlobalOptions: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp(
            "vcd to talk to: http://HOST:PORT or unix:///PATH (default: $VC_ENDPOINT, the local socket, or http://127.0.0.1:7480).",
            valueName: "url"))
    public var endpoint: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "File with the API token for a TCP endpoint (default: $VC_TOKEN_FILE or /var/lib/peerless/api-token).",
            valueName: "path"))
    public var tokenFile: String?

    @Option(name: [.short, .long], help: "Output format: table or json.")
    public var output: OutputFormat = .table

    public init() {}

    var client: VCDClient {
        get throws {
            let url = endpoint ?? VCDClient.defaultEndpoint()
            return VCDClient(endpoint: url, token: try VCDClient.token(for: url, file: tokenFile))
        }
    }
}

/// Maps failures to one line on stderr and an exit code, in one place.
enum CLI {
    static func run(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let error as ClientError {
            fail(error.description, code: exitCode(error.code))
        } catch let error as ModelError {
            fail(error.description, code: 2)
        } catch let error as ValidationError {
            fail(error.message, code: 2)
        }
    }

    static func fail(_ message: String, code: Int32) -> Never {
        FileHandle.standardError.write(Data("\(programName): \(message)\n".utf8))
        exit(code)
    }

    /// 1 failed, 2 invalid input, 3 not found, 4 conflict or busy, 5 a daemon is down,
    /// 6 vcd unreachable, 7 not allowed (API token missing or wrong).
    static func exitCode(_ code: String) -> Int32 {
        switch code {
        case "invalid", "too-large": return 2
        case "not-found": return 3
        case "conflict": return 4
        case "unavailable": return 5
        case "unreachable": return 6
        case "unauthorized": return 7
        default: return 1
        }
    }

    static var programName: String {
        URL(fileURLWithPath: CommandLine.arguments.first ?? "vc").lastPathComponent
    }
}
