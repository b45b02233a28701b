import ArgumentParser
import Foundation
import VCModel
import Yams

/// A cluster as a file: `vc apply -f cluster.yaml` makes it so.
///
///     name: demo
///     image: tiny
///     vms: 3
///     vcpus: 1
///     memory: 256M
///     state: running        # or suspended
///     sshKeys: ["ssh-ed25519 AAAA… me@host"]
struct ClusterManifest: Decodable {
    var name: String
    var image: String
    var vms: Int
    var vcpus: Int?
    var memory: String?
    var state: String?
    var sshKeys: [String]?

    func spec() throws -> ClusterSpec {
        ClusterSpec(
            name: name, image: image, vms: vms, vcpus: vcpus ?? 1,
            memoryMiB: try memory.map { try ByteSize.parseMiB($0) } ?? 256,
            sshKeys: sshKeys ?? [])
    }
}

struct Apply: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create a cluster from a YAML file, or bring an existing one to the file's state.",
        discussion: "Fields: name, image, vms, vcpus, memory, state (running|suspended), sshKeys.")

    @OptionGroup var global: GlobalOptions
    @Option(name: .shortAndLong, help: "The cluster manifest (YAML).", completion: .file()) var file: String

    func run() async throws {
        try await CLI.run {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw ValidationError("cannot read \(file)")
            }
            let manifest: ClusterManifest
            do {
                manifest = try YAMLDecoder().decode(ClusterManifest.self, from: text)
            } catch {
                throw ValidationError(Self.problem(error, in: file))
            }
            let spec = try manifest.spec()
            try spec.validate()
            let desired = manifest.state ?? "running"
            guard desired == "running" || desired == "suspended" else {
                throw ValidationError("state must be running or suspended, not \(desired)")
            }
            let existing: [VirtualCluster] = try await global.client.get("/v1/clusters")
            if let current = existing.first(where: { $0.name == spec.name }) {
                let had = current.spec
                guard had.image == spec.image, had.vms == spec.vms, had.vcpus == spec.vcpus,
                    had.memoryMiB == spec.memoryMiB
                else {
                    throw ValidationError(
                        "cluster \(spec.name) exists with a different shape; changing image, vms, vcpus or memory is not supported yet (destroy and apply again)"
                    )
                }
                if current.state.rawValue != desired {
                    let action = desired == "running" ? "resume" : "suspend"
                    _ = try await ClusterOps.change(
                        spec.name, .post, "/v1/clusters/\(spec.name)/\(action)", global: global)
                }
                return try await ClusterOps.show(spec.name, global: global)
            }
            try await ClusterOps.create(spec, global: global)
            if desired == "suspended" {
                _ = try await ClusterOps.change(spec.name, .post, "/v1/clusters/\(spec.name)/suspend", global: global)
            }
        }
    }

    /// A manifest that did not decode, in one line: `FILE:LINE:COLUMN: problem` where the
    /// YAML itself breaks (an editor jumps there), else the field that is wrong. Yams wraps
    /// its syntax errors in a `DecodingError` whose message spans several lines.
    static func problem(_ error: any Error, in file: String) -> String {
        var error = error
        if case DecodingError.dataCorrupted(let context) = error, let yaml = context.underlyingError as? YamlError {
            error = yaml
        }
        switch error {
        case let yaml as YamlError: return syntaxProblem(yaml, in: file)
        case let decoding as DecodingError: return "\(file): \(DecodingProblem.describe(decoding))"
        default:
            return "\(file) is not a cluster manifest: \(error)".split(whereSeparator: \.isNewline).joined(
                separator: " ")
        }
    }

    private static func syntaxProblem(_ error: YamlError, in file: String) -> String {
        func at(_ mark: Mark, _ problem: String, _ context: YamlError.Context?) -> String {
            let during = context.map { " (\($0.text) at \($0.mark.line):\($0.mark.column))" } ?? ""
            return "\(file):\(mark.line):\(mark.column): \(problem)\(during)"
        }
        switch error {
        case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _),
            .composer(let context, let problem, let mark, _):
            return at(mark, problem, context)
        case .duplicatedKeysInMapping(let duplicates, let context):
            let keys = duplicates.sorted().map { "'\($0)'" }.joined(separator: ", ")
            return at(context.mark, "duplicate key \(keys)", nil)
        case .reader(let problem, let offset, _, _):
            return "\(file): \(problem)\(offset.map { " at byte \($0)" } ?? "")"
        case .dataCouldNotBeDecoded: return "\(file): not UTF-8 text"
        default: return "\(file): \(error)".split(whereSeparator: \.isNewline).joined(separator: " ")
        }
    }
}
