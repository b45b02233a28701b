import ISCSI
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
    /// Incoming CHAP accounts bound to the target: with any, a login needs one's secret.
    public var accounts: [String]

    public init(
        tid: Int, iqn: String, backingFiles: [String], initiators: [String], connected: [String],
        accounts: [String] = []
    ) {
        self.tid = tid
        self.iqn = iqn
        self.backingFiles = backingFiles
        self.initiators = initiators
        self.connected = connected
        self.accounts = accounts
    }
}

/// Exports files as iSCSI targets with tgtd, one target per disk with the disk as LUN 1,
/// bound by initiator name and, when asked, a CHAP account. It speaks tgtd's management
/// socket (`TargetDaemon`) rather than running tgtadm: no process per request, and no
/// password in a command line. An actor, so that the operations of one exporter on one
/// IQN or one CHAP account never interleave.
public actor TargetExporter {
    private let logger: Logger
    private let daemon: TargetDaemon
    /// tgtd's management port; 0 for tgtd's default. A node may run several tgtd
    /// instances (tests do), each reached through its own port.
    public let controlPort: Int

    /// Target ids chosen by creations still in flight here. tgtd refusing a taken id is
    /// what makes the choice safe, also against other processes; this only keeps parallel
    /// exports of one exporter from all trying the same lowest free id first.
    private var claimed: Set<Int> = []
    /// Keys ("target:IQN", "account:USER") with an operation under way, and who waits.
    private var busy: [String: [CheckedContinuation<Void, Never>]] = [:]

    /// Creation attempts before giving up: each refused id means another creator took
    /// it between our listing and our request, so this many is already a storm.
    static let createAttempts = 32

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

    public init(controlPort: Int = 0, logger: Logger) {
        self.controlPort = controlPort
        self.logger = logger
        self.daemon = TargetDaemon(controlPort: controlPort)
    }

    /// Whether `target` serves `file` to exactly `initiators` and requires exactly
    /// `account` (nil: no account bound). Session parameters are not compared: they are
    /// set when a target is made and tgtd loses them only with the target itself.
    public static func serves(_ target: TargetInfo?, file: String, to initiators: [String], account: String?) -> Bool {
        guard let target else { return false }
        return target.backingFiles == [file] && Set(target.initiators) == Set(initiators)
            && target.accounts == (account.map { [$0] } ?? [])
    }

    /// Makes (or re-makes) target `iqn` serving `file` to `initiators` only. With `chap`,
    /// the account (user/password, made if missing, password updated if it differs or
    /// simply re-set) is bound BEFORE any initiator is bound, so nobody can log in without
    /// it at any instant.
    ///
    /// Idempotent: an existing target with the same IQN and file is kept and its ACL and
    /// account corrected. A failure midway removes the target this call made.
    public func export(iqn: String, file: String, initiators: [String], chap: CHAPCredentials?)
        async throws(StorageError) -> TargetInfo
    {
        await acquire("target:\(iqn)")
        defer { release("target:\(iqn)") }
        // Re-making an account unbinds it everywhere for a moment; binding it to this
        // target must not fall into that moment.
        if let chap { await acquire("account:\(chap.user)") }
        defer { if let chap { release("account:\(chap.user)") } }

        for attempt in 1...Self.createAttempts {
            // Fresh each time: a listing older than another creator's request is how two
            // creators used to pick the same id.
            let listing = try await targets()
            if let existing = listing.first(where: { $0.iqn == iqn }) {
                if existing.backingFiles == [file] {
                    return try await correct(existing, initiators: initiators, chap: chap)
                }
                try await remove(tid: existing.tid, iqn: iqn)
                continue
            }
            let used = Set(listing.map(\.tid)).union(claimed)
            let tid = (1...).first { !used.contains($0) }!
            claimed.insert(tid)
            defer { claimed.remove(tid) }
            do {
                try await daemon.send(.newTarget(tid: tid, name: iqn))
            } catch .targetRefused(_, _, let refusal) where refusal == .targetExists {
                // The id, or the IQN, was taken since the listing: list again.
                logger.debug("target id taken", metadata: ["iqn": "\(iqn)", "tid": "\(tid)", "attempt": "\(attempt)"])
                continue
            }
            return try await build(tid: tid, iqn: iqn, file: file, initiators: initiators, chap: chap)
        }
        throw .targetFailed(
            iqn: iqn, operation: "create",
            reason: "tgtd refused \(Self.createAttempts) target ids in a row as taken; too many creators at once")
    }

    /// Removes the target (dropping its sessions) and, when given, the CHAP account.
    /// Idempotent. An account still bound to another target is kept (and logged):
    /// deleting it would leave that target open to its ACL alone.
    public func unexport(iqn: String, account: String?) async throws(StorageError) {
        await acquire("target:\(iqn)")
        defer { release("target:\(iqn)") }
        if let account { await acquire("account:\(account)") }
        defer { if let account { release("account:\(account)") } }

        let listing = try await targets()
        if let t = listing.first(where: { $0.iqn == iqn }) { try await remove(tid: t.tid, iqn: iqn) }
        guard let account else { return }
        let others = listing.filter { $0.iqn != iqn && $0.accounts.contains(account) }.map(\.iqn)
        guard others.isEmpty else {
            logger.warning(
                "CHAP account kept: other targets require it",
                metadata: ["iqn": "\(iqn)", "account": "\(account)", "targets": "\(others)"])
            return
        }
        try await send(.deleteAccount(user: account), tolerating: [.noAccount])
    }

    public func target(_ iqn: String) async throws(StorageError) -> TargetInfo? {
        try await targets().first { $0.iqn == iqn }
    }

    public func targets() async throws(StorageError) -> [TargetInfo] {
        Self.parse(try await daemon.send(.showTargets()))
    }

    /// One connection of a session logged in to a target.
    public struct Connection: Sendable, Equatable {
        public var session: UInt64
        public var connection: UInt32
        public var initiator: String
    }

    /// The target's connections as tgtd lists them now.
    public func connections(tid: Int) async throws(StorageError) -> [Connection] {
        Self.parseConnections(try await daemon.send(.showConnections(tid: tid)))
    }

    /// Fences incarnations: every target stops admitting `initiators`, and every
    /// connection they hold is closed, until tgtd's listing shows none of them on any
    /// target. tgt checks its ACL only at login, so the unbind alone would leave a live
    /// session writing; and a session cut off retries its login forever, so the names
    /// must never be bound again (the catalog records them). Idempotent.
    ///
    /// - Returns: the targets it cut off a connection of.
    @discardableResult
    public func fence(initiators: Set<String>, within bound: Duration = .seconds(10)) async throws(StorageError)
        -> [String]
    {
        guard !initiators.isEmpty else { return [] }
        var cut: Set<String> = []
        let deadline = ContinuousClock.now + bound
        while true {
            var left = 0
            for t in try await targets() {
                await acquire("target:\(t.iqn)")
                do {
                    for name in t.initiators where initiators.contains(name) {
                        try await send(.unbindInitiator(tid: t.tid, name: name), tolerating: [.noRule, .noTarget])
                    }
                    // The target listing names every initiator with a session (I_T nexus):
                    // only those targets' connections are listed.
                    let connected = t.connected.contains { initiators.contains($0) }
                    for c in connected ? try await connections(tid: t.tid) : []
                    where initiators.contains(c.initiator) {
                        left += 1
                        cut.insert(t.iqn)
                        try await send(
                            .deleteConnection(tid: t.tid, session: c.session, connection: c.connection),
                            tolerating: [.noSession, .noConnection, .noTarget])
                    }
                } catch {
                    release("target:\(t.iqn)")
                    throw error
                }
                release("target:\(t.iqn)")
            }
            // tgtadm answers before tgtd has closed the connection: list again until none.
            if left == 0 { break }
            guard ContinuousClock.now < deadline else {
                throw .targetFailed(
                    iqn: cut.sorted().joined(separator: ", "), operation: "fence",
                    reason: "tgtd still lists \(left) connection(s) of the fenced initiators after \(bound)")
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
        if !cut.isEmpty { logger.notice("fenced", metadata: ["targets": "\(cut.sorted())"]) }
        return cut.sorted()
    }

    /// Parses `--op show --mode conn --tid T`.
    static func parseConnections(_ text: String) -> [Connection] {
        var out: [Connection] = []
        var session: UInt64?
        var connection: UInt32?
        for raw in text.split(separator: "\n") {
            let line = raw.trimmed
            if line.hasPrefix("Session: ") {
                session = UInt64(line.dropFirst("Session: ".count))
                connection = nil
            } else if line.hasPrefix("Connection: ") {
                connection = UInt32(line.dropFirst("Connection: ".count))
            } else if line.hasPrefix("Initiator: "), let session, let connection {
                out.append(
                    Connection(
                        session: session, connection: connection, initiator: String(line.dropFirst("Initiator: ".count))
                    ))
            }
        }
        return out
    }

    /// The portals tgtd listens on, e.g. ["127.0.0.1:3260"] (`--op show --mode portal`).
    public func portals() async throws(StorageError) -> [String] {
        Self.parsePortals(try await daemon.send(.showPortals()))
    }

    // MARK: - Steps

    /// Gives a target this call just created its LUN, parameters, account and ACL, in
    /// that order; removes it again if any step fails.
    private func build(tid: Int, iqn: String, file: String, initiators: [String], chap: CHAPCredentials?)
        async throws(StorageError) -> TargetInfo
    {
        let subject = "iSCSI target \(iqn)"
        do {
            try await daemon.send(.newLogicalUnit(tid: tid, lun: 1, path: file), about: subject)
            for (name, value) in Self.sessionParameters {
                try await daemon.send(.updateTarget(tid: tid, name: name, value: value), about: subject)
            }
            if let chap {
                try await ensureAccount(chap)
                try await daemon.send(.bindAccount(tid: tid, user: chap.user), about: subject)
            }
            for name in initiators {
                try await daemon.send(.bindInitiator(tid: tid, name: name), about: subject)
            }
        } catch {
            try? await remove(tid: tid, iqn: iqn)
            throw error
        }
        logger.debug("exported", metadata: ["iqn": "\(iqn)", "tid": "\(tid)", "file": "\(file)"])
        return TargetInfo(
            tid: tid, iqn: iqn, backingFiles: [file], initiators: initiators, connected: [],
            accounts: chap.map { [$0.user] } ?? [])
    }

    /// Brings an existing target serving the right file to exactly `initiators` and
    /// `chap`. Access only narrows before it widens: unwanted initiators go first, the
    /// account is bound before any new initiator.
    private func correct(_ t: TargetInfo, initiators: [String], chap: CHAPCredentials?) async throws(StorageError)
        -> TargetInfo
    {
        if chap == nil, Self.serves(t, file: t.backingFiles.first ?? "", to: initiators, account: nil) { return t }
        let subject = "iSCSI target \(t.iqn)"
        for name in t.initiators where !initiators.contains(name) {
            try await send(.unbindInitiator(tid: t.tid, name: name), about: subject, tolerating: [.noRule])
        }
        if let chap {
            try await ensureAccount(chap)
            try await send(.bindAccount(tid: t.tid, user: chap.user), about: subject, tolerating: [.accountExists])
        }
        for user in t.accounts where user != chap?.user {
            try await send(.unbindAccount(tid: t.tid, user: user), about: subject, tolerating: [.noAccount])
        }
        for name in initiators where !t.initiators.contains(name) {
            try await send(.bindInitiator(tid: t.tid, name: name), about: subject, tolerating: [.ruleExists])
        }
        logger.debug("export corrected", metadata: ["iqn": "\(t.iqn)", "tid": "\(t.tid)"])
        var corrected = t
        corrected.initiators = initiators
        corrected.accounts = chap.map { [$0.user] } ?? []
        return try await target(t.iqn) ?? corrected
    }

    /// Makes the account, or re-makes it when it exists: tgtd can neither show nor change
    /// a password, so re-setting it is the only way to be sure it is `chap.password`.
    /// Deleting an account unbinds it from every target, which would leave each of them
    /// open to its ACL alone; so those targets first lose their ACL (an empty ACL admits
    /// nobody) and get it back after the account. The caller holds the account's key.
    private func ensureAccount(_ chap: CHAPCredentials) async throws(StorageError) {
        do {
            try await daemon.send(.newAccount(user: chap.user, password: chap.password))
            return
        } catch .targetRefused(_, _, let refusal) where refusal == .accountExists {}
        let holders = try await targets().filter { $0.accounts.contains(chap.user) }
        for t in holders {
            for name in t.initiators {
                try await send(.unbindInitiator(tid: t.tid, name: name), tolerating: [.noRule, .noTarget])
            }
        }
        try await send(.deleteAccount(user: chap.user), tolerating: [.noAccount])
        try await daemon.send(.newAccount(user: chap.user, password: chap.password))
        for t in holders {
            try await send(.bindAccount(tid: t.tid, user: chap.user), tolerating: [.accountExists, .noTarget])
            for name in t.initiators {
                try await send(.bindInitiator(tid: t.tid, name: name), tolerating: [.ruleExists, .noTarget])
            }
        }
        logger.debug("CHAP account re-set", metadata: ["account": "\(chap.user)", "targets": "\(holders.count)"])
    }

    private func remove(tid: Int, iqn: String) async throws(StorageError) {
        try await send(.deleteTarget(tid: tid, force: true), about: "iSCSI target \(iqn)", tolerating: [.noTarget])
        logger.debug("unexported", metadata: ["iqn": "\(iqn)", "tid": "\(tid)"])
    }

    /// Sends a request whose listed refusals mean "already so" (or "already gone").
    private func send(
        _ request: TargetDaemon.Request, about subject: String? = nil, tolerating refusals: Set<TargetDaemon.Refusal>
    ) async throws(StorageError) {
        do {
            try await daemon.send(request, about: subject)
        } catch .targetRefused(_, _, let refusal) where refusals.contains(refusal) {}
    }

    // MARK: - Keys

    /// Waits until no other operation of this exporter holds `key`, then holds it.
    private func acquire(_ key: String) async {
        guard busy[key] != nil else {
            busy[key] = []
            return
        }
        await withCheckedContinuation { busy[key, default: []].append($0) }
    }

    /// Hands `key` to the next waiter, if any.
    private func release(_ key: String) {
        guard var waiters = busy[key], !waiters.isEmpty else {
            busy[key] = nil
            return
        }
        let next = waiters.removeFirst()
        busy[key] = waiters
        next.resume()
    }

    // MARK: - Listings

    /// Parses tgtd's target listing (`tgtadm --op show --mode target`).
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
            case "Account information:":
                // An outgoing account (the target's own, for mutual CHAP) admits nobody.
                if !line.hasSuffix(" (outgoing)") { current!.accounts.append(line) }
            case "ACL information:":
                current!.initiators.append(line)
            default: break
            }
        }
        if let c = current { result.append(c) }
        return result
    }

    /// Parses `tgtadm --op show --mode portal`: "Portal: 127.0.0.1:3260,1" lines, the
    /// number after the comma being the portal group.
    static func parsePortals(_ text: String) -> [String] {
        text.split(separator: "\n").compactMap { raw in
            let line = raw.trimmed
            guard line.hasPrefix("Portal: ") else { return nil }
            let portal = line.dropFirst("Portal: ".count)
            return String(portal.split(separator: ",", maxSplits: 1).first ?? portal)
        }
    }
}
