import Logging
import VCHost

/// A target as tgtd reports it.
public struct TargetInfo: Sendable, Equatable {
    public var tid: Int
    public var iqn: String
    /// Backing files of LUNs other than the controller LUN 0.
    public var backingFiles: [String]
    /// Initiator names bound in the ACL.
    public var initiators: [String]
    /// Initiators with an open I_T nexus (logged in now).
    public var connected: [String]
}

/// Exports files as iSCSI targets with tgtd, one target per disk with the disk as LUN 1,
/// bound by initiator name (and CHAP when configured). An actor, because tgtd target ids
/// are chosen by the caller and two concurrent exports must not pick the same one.
public actor TargetExporter {
    private let logger: Logger
    /// Target ids picked by exports still in flight: the actor is reentrant across awaits,
    /// so a tid must be reserved before the first await that follows its choice.
    private var reserved: Set<Int> = []
    public let chap: (user: String, password: String)?

    /// Session parameters every target offers. tgt's defaults (8 KiB data segments,
    /// 256 KiB bursts, an R2T round trip before any write data) cap a loopback session at
    /// ~400 MiB/s; these, which libiscsi and QEMU propose anyway, reach ~1.1 GiB/s.
    static let sessionParameters: KeyValuePairs<String, String> = [
        "MaxRecvDataSegmentLength": "262144",
        "MaxXmitDataSegmentLength": "262144",
        "MaxBurstLength": "16776192",
        "FirstBurstLength": "1048576",
        "InitialR2T": "No",
    ]

    /// tgtd's management port; 0 for tgtd's default. A node may run several tgtd
    /// instances (tests do), each reached through its own port.
    public let controlPort: Int

    public init(chap: (user: String, password: String)? = nil, controlPort: Int = 0, logger: Logger) {
        self.chap = chap
        self.controlPort = controlPort
        self.logger = logger
    }

    private var baseArguments: [String] {
        (controlPort > 0 ? ["--control-port", "\(controlPort)"] : []) + ["--lld", "iscsi"]
    }

    /// Whether `target` serves `file` to `initiators` only. CHAP and session parameters
    /// are not compared: they are set when a target is made and tgtd loses them only with
    /// the target itself.
    public static func serves(_ target: TargetInfo?, file: String, to initiators: [String]) -> Bool {
        guard let target else { return false }
        return target.backingFiles == [file] && Set(target.initiators) == Set(initiators)
    }

    /// Makes (or re-makes) the target `iqn` serving `file` to `initiators` only.
    /// Idempotent: an existing target with the same IQN and file is kept and its ACL
    /// corrected. A failure midway removes what this call made.
    public func export(iqn: String, file: String, initiators: [String]) async throws(StorageError) -> TargetInfo {
        let existing = try await targets()
        if let t = existing.first(where: { $0.iqn == iqn }) {
            if t.backingFiles == [file] {
                guard !Self.serves(t, file: file, to: initiators) else { return t }
                for name in initiators where !t.initiators.contains(name) {
                    try await tgtadm(
                        iqn, "bind",
                        ["--op", "bind", "--mode", "target", "--tid", "\(t.tid)", "--initiator-name", name])
                }
                for name in t.initiators where !initiators.contains(name) {
                    try await tgtadm(
                        iqn, "unbind",
                        ["--op", "unbind", "--mode", "target", "--tid", "\(t.tid)", "--initiator-name", name])
                }
                return try await target(iqn) ?? t
            }
            try await remove(tid: t.tid, iqn: iqn)
        }
        let used = Set(existing.map(\.tid)).union(reserved)
        let tid = (1...).first { !used.contains($0) }!
        reserved.insert(tid)
        defer { reserved.remove(tid) }
        try await tgtadm(iqn, "create", ["--op", "new", "--mode", "target", "--tid", "\(tid)", "-T", iqn])
        do {
            try await tgtadm(
                iqn, "add LUN 1 to",
                ["--op", "new", "--mode", "logicalunit", "--tid", "\(tid)", "--lun", "1", "-b", file])
            for (name, value) in Self.sessionParameters {
                try await tgtadm(
                    iqn, "set \(name) on",
                    ["--op", "update", "--mode", "target", "--tid", "\(tid)", "--name", name, "--value", value])
            }
            for name in initiators {
                try await tgtadm(
                    iqn, "bind", ["--op", "bind", "--mode", "target", "--tid", "\(tid)", "--initiator-name", name])
            }
            if let chap {
                try await ensureAccount(chap.user, chap.password)
                try await tgtadm(
                    iqn, "bind CHAP account to",
                    ["--op", "bind", "--mode", "account", "--tid", "\(tid)", "--user", chap.user])
            }
        } catch {
            try? await remove(tid: tid, iqn: iqn)
            throw error
        }
        logger.debug("exported", metadata: ["iqn": "\(iqn)", "tid": "\(tid)", "file": "\(file)"])
        return TargetInfo(tid: tid, iqn: iqn, backingFiles: [file], initiators: initiators, connected: [])
    }

    /// Removes the target and drops its sessions. Idempotent.
    public func unexport(iqn: String) async throws(StorageError) {
        guard let t = try await target(iqn) else { return }
        try await remove(tid: t.tid, iqn: iqn)
    }

    public func target(_ iqn: String) async throws(StorageError) -> TargetInfo? {
        try await targets().first { $0.iqn == iqn }
    }

    public func targets() async throws(StorageError) -> [TargetInfo] {
        let out: CommandOutput
        do {
            out = try await HostCommand.run(
                "tgtadm", baseArguments + ["--op", "show", "--mode", "target"], timeout: .seconds(30))
        } catch {
            throw .targetDaemon(reason: error.reason)
        }
        return Self.parse(out.stdout)
    }

    private func remove(tid: Int, iqn: String) async throws(StorageError) {
        try await tgtadm(iqn, "delete", ["--op", "delete", "--mode", "target", "--tid", "\(tid)", "--force"])
        logger.debug("unexported", metadata: ["iqn": "\(iqn)", "tid": "\(tid)"])
    }

    private func ensureAccount(_ user: String, _ password: String) async throws(StorageError) {
        let out: CommandOutput
        do {
            out = try await HostCommand.run("tgtadm", baseArguments + ["--op", "show", "--mode", "account"])
        } catch {
            throw .targetDaemon(reason: error.reason)
        }
        let users = out.stdout.split(separator: "\n").map { $0.trimmed }
        if users.contains(user) { return }
        try await tgtadm(
            user, "create CHAP account", ["--op", "new", "--mode", "account", "--user", user, "--password", password])
    }

    private func tgtadm(_ what: String, _ operation: String, _ args: [String]) async throws(StorageError) {
        do {
            try await HostCommand.run("tgtadm", baseArguments + args, timeout: .seconds(30))
        } catch {
            if error.isMissingTargetDaemon { throw .targetDaemon(reason: error.reason) }
            throw .targetFailed(iqn: what, operation: operation, reason: error.reason)
        }
    }

    /// Parses `tgtadm --op show --mode target`.
    static func parse(_ text: String) -> [TargetInfo] {
        var result: [TargetInfo] = []
        var current: TargetInfo?
        var section = ""
        for raw in text.split(separator: "\n", omittingEmptySubsequences: true) {
            let line = raw.trimmed
            if raw.hasPrefix("Target ") {
                if let c = current { result.append(c) }
                let head = raw.dropFirst("Target ".count)
                let parts = head.split(separator: ":", maxSplits: 1)
                current = TargetInfo(
                    tid: Int(parts.first ?? "") ?? -1, iqn: parts.count > 1 ? parts[1].trimmed : "",
                    backingFiles: [], initiators: [], connected: [])
                section = ""
                continue
            }
            guard current != nil else { continue }
            if line.hasSuffix("information:") {
                section = line
                continue
            }
            switch section {
            case "I_T nexus information:":
                if line.hasPrefix("Initiator: ") {
                    let name = line.dropFirst("Initiator: ".count).split(separator: " ").first.map(String.init) ?? ""
                    current!.connected.append(name)
                }
            case "LUN information:":
                if line.hasPrefix("Backing store path: ") {
                    let path = String(line.dropFirst("Backing store path: ".count))
                    if path != "None" { current!.backingFiles.append(path) }
                }
            case "ACL information:":
                current!.initiators.append(line)
            default: break
            }
        }
        if let c = current { result.append(c) }
        return result
    }
}
