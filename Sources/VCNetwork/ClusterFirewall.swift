import Glibc
import Logging
import VCHost
import VCModel

/// Loads and removes a cluster network's tenant boundary (`VCModel.GuestBoundary`) with
/// `nft`. The ruleset is written next to the network's dnsmasq files before it is loaded,
/// so what was applied can be read back; removal deletes exactly the two tables named
/// after the bridge.
public struct ClusterFirewall: Sendable {
    public let boundary: GuestBoundary
    /// Where the ruleset file goes (the node's network state directory).
    public let runDirectory: String
    private let logger: Logger

    public init(boundary: GuestBoundary, runDirectory: String, logger: Logger) {
        self.boundary = boundary
        self.runDirectory = runDirectory
        self.logger = logger
    }

    public var rulesFile: String { "\(runDirectory)/\(boundary.network.bridge).nft" }

    /// Loads the rules, replacing any earlier version of both tables in one transaction.
    /// Idempotent.
    public func ensure() async throws(NetworkError) {
        do {
            try HostFiles.makeDirectories(runDirectory)
            try HostFiles.write(rulesFile, boundary.ruleset)
        } catch {
            throw .firewallFailed(bridge: boundary.network.bridge, operation: "write", reason: "\(error)")
        }
        try await nft("load", ["-f", rulesFile])
    }

    /// Removes both tables and the rules file. Idempotent: a teardown replayed by recovery
    /// finds nothing and succeeds.
    public func remove() async throws(NetworkError) {
        let file = "\(runDirectory)/\(boundary.network.bridge).delete.nft"
        do {
            try HostFiles.makeDirectories(runDirectory)
            try HostFiles.write(file, GuestBoundary.deletion(bridge: boundary.network.bridge))
        } catch {
            throw .firewallFailed(bridge: boundary.network.bridge, operation: "write", reason: "\(error)")
        }
        defer { unlink(file) }
        try await nft("remove", ["-f", file])
        unlink(rulesFile)
    }

    /// Whether both tables are loaded (given `loadedTables()`) and were loaded from the
    /// ruleset this boundary renders now: a rules file that differs means an older vcd, or
    /// other services, made them.
    public func isCurrent(tables: Set<String>) -> Bool {
        Self.isLoaded(bridge: boundary.network.bridge, tables: tables)
            && (try? HostFiles.read(rulesFile)) == boundary.ruleset
    }

    /// Whether both of this network's tables are loaded, given `nft list tables` output.
    public static func isLoaded(bridge: String, tables: Set<String>) -> Bool {
        GuestBoundary.families.allSatisfy { tables.contains("\($0) \(GuestBoundary.table(bridge: bridge))") }
    }

    /// The tables nft has loaded, as "FAMILY NAME": one listing serves a whole reconcile pass.
    public static func loadedTables() async throws(NetworkError) -> Set<String> {
        let out: CommandOutput
        do {
            out = try await HostCommand.run("nft", ["list", "tables"], timeout: .seconds(30))
        } catch {
            throw .firewallFailed(bridge: "*", operation: "list", reason: error.reason)
        }
        return Set(
            out.stdout.split(separator: "\n").compactMap { line -> String? in
                let fields = line.split(separator: " ")
                guard fields.count == 3, fields[0] == "table" else { return nil }
                return "\(fields[1]) \(fields[2])"
            })
    }

    private func nft(_ operation: String, _ args: [String]) async throws(NetworkError) {
        do {
            try await HostCommand.run("nft", args, timeout: .seconds(30), logger: logger)
        } catch {
            throw .firewallFailed(bridge: boundary.network.bridge, operation: operation, reason: error.reason)
        }
    }
}
