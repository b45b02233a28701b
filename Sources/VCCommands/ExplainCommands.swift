import ArgumentParser
import Foundation
import VCModel
import Yams

extension RecoveryBudget.Notice: ExpressibleByArgument {}

struct ExplainCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "explain", abstract: "How Peerless behaves, worked out from its settings.",
        subcommands: [ExplainTimers.self])
}

/// `vc explain timers`: the worst case from a node's death to its VMs running elsewhere,
/// term by term, and when a node cut off from etcd stops its own. Computed here, from
/// values given or read from a vcd configuration file: vcd's API does not tell its
/// timers, and etcd's are etcd's own flags.
struct ExplainTimers: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "timers",
        abstract: "The arithmetic of detecting a dead node and bringing its VMs back, from the configured timers.",
        discussion: """
            Values start from --preset (daemon: vcd's and etcd's defaults; testbed: what scripts/testbed.sh \
            configures), then leaseTTLSeconds and reconcileIntervalSeconds from a vcd configuration file \
            (--config), then each flag. etcd's timers are its --heartbeat-interval and --election-timeout. \
            Fencing and restart are estimates, to be compared with what bench/ measures.
            """)

    enum Preset: String, ExpressibleByArgument, CaseIterable {
        case daemon, testbed

        var settings: RecoveryBudget.Settings {
            switch self {
            case .daemon: return .daemonDefaults
            case .testbed: return .testbed
            }
        }
    }

    @Option(help: "Starting values: daemon (vcd's and etcd's defaults) or testbed (scripts/testbed.sh).")
    var preset: Preset = .daemon

    @Option(
        help: ArgumentHelp(
            "A vcd configuration file (e.g. /etc/peerless/vcd.yaml) to read leaseTTLSeconds and reconcileIntervalSeconds from.",
            valueName: "path"))
    var config: String?

    @Option(
        name: .customLong("lease-ttl"),
        help: ArgumentHelp("The lease TTL vcd asks for (leaseTTLSeconds; daemon 10, testbed 3).", valueName: "seconds"))
    var leaseTTL: Int?

    @Option(
        name: .customLong("renewal-ms"),
        help: ArgumentHelp("The renewal period (default: a third of the TTL).", valueName: "ms"))
    var renewalMilliseconds: Int?

    @Option(
        name: .customLong("margin-ms"),
        help: ArgumentHelp(
            "How long before its lease can expire a node that cannot renew it self-fences (default 1000).",
            valueName: "ms"))
    var marginMilliseconds: Int?

    @Option(
        name: .customLong("etcd-heartbeat-ms"),
        help: ArgumentHelp("etcd's --heartbeat-interval (daemon 100, testbed 200).", valueName: "ms"))
    var heartbeatMilliseconds: Int?

    @Option(
        name: .customLong("etcd-election-ms"),
        help: ArgumentHelp("etcd's --election-timeout (daemon 1000, testbed 2000).", valueName: "ms"))
    var electionMilliseconds: Int?

    @Option(
        name: .customLong("reconcile-interval"),
        help: ArgumentHelp("vcd's reconcileIntervalSeconds (daemon 15, testbed 5).", valueName: "seconds"))
    var reconcileInterval: Int?

    @Option(
        help:
            "How a live node notices a dead one: poll (every 0.5 s, what vcd does), reconcile (at its next pass) or watch (at once)."
    )
    var notice: RecoveryBudget.Notice?

    @Option(
        name: .customLong("fencing-ms"),
        help: ArgumentHelp("Estimate: fencing a node at the storage target (default 500).", valueName: "ms"))
    var fencingMilliseconds: Int?

    @Option(
        name: .customLong("restart-ms"),
        help: ArgumentHelp("Estimate: placing and starting its VMs elsewhere (default 1000).", valueName: "ms"))
    var restartMilliseconds: Int?

    @Option(name: [.short, .long], help: "Output format: table or json.")
    var output: OutputFormat = .table

    func validate() throws {
        for (flag, value) in [
            ("--lease-ttl", leaseTTL), ("--renewal-ms", renewalMilliseconds), ("--margin-ms", marginMilliseconds),
            ("--etcd-heartbeat-ms", heartbeatMilliseconds), ("--etcd-election-ms", electionMilliseconds),
            ("--reconcile-interval", reconcileInterval),
        ] {
            if let value, value <= 0 { throw ValidationError("\(flag) must be positive, not \(value)") }
        }
        for (flag, value) in [("--fencing-ms", fencingMilliseconds), ("--restart-ms", restartMilliseconds)] {
            if let value, value < 0 { throw ValidationError("\(flag) must be 0 or more, not \(value)") }
        }
    }

    func run() async throws {
        try await CLI.run {
            let (settings, sources) = try gather()
            let budget = try RecoveryBudget(settings)
            if output == .json { return print(Render.json(Explanation(budget: budget, sources: sources))) }
            print(Self.render(budget, sources: sources))
        }
    }

    /// The settings and, for each, where its value came from.
    func gather() throws -> (RecoveryBudget.Settings, [String: String]) {
        var s = preset.settings
        let fromPreset = "\(preset.rawValue) preset"
        var sources = [
            "leaseTTLSeconds": fromPreset, "renewalPeriod": "a third of the TTL", "selfFenceMargin": "default",
            "etcdHeartbeat": fromPreset, "etcdElectionTimeout": fromPreset, "reconcileIntervalSeconds": fromPreset,
            "notice": "default", "fencing": "estimate", "restart": "estimate",
        ]
        if let config {
            let file = try Self.readConfiguration(config)
            if let v = file.leaseTTLSeconds { (s.leaseTTLSeconds, sources["leaseTTLSeconds"]) = (v, config) }
            if let v = file.reconcileIntervalSeconds {
                (s.reconcileIntervalSeconds, sources["reconcileIntervalSeconds"]) = (v, config)
            }
        }
        if let v = leaseTTL { (s.leaseTTLSeconds, sources["leaseTTLSeconds"]) = (v, "--lease-ttl") }
        if let v = renewalMilliseconds { (s.renewalPeriodMilliseconds, sources["renewalPeriod"]) = (v, "--renewal-ms") }
        if let v = marginMilliseconds {
            (s.selfFenceMarginMilliseconds, sources["selfFenceMargin"]) = (v, "--margin-ms")
        }
        if let v = heartbeatMilliseconds {
            (s.etcdHeartbeatMilliseconds, sources["etcdHeartbeat"]) = (v, "--etcd-heartbeat-ms")
        }
        if let v = electionMilliseconds {
            (s.etcdElectionTimeoutMilliseconds, sources["etcdElectionTimeout"]) = (v, "--etcd-election-ms")
        }
        if let v = reconcileInterval {
            (s.reconcileIntervalSeconds, sources["reconcileIntervalSeconds"]) = (v, "--reconcile-interval")
        }
        if let v = notice { (s.notice, sources["notice"]) = (v, "--notice") }
        if let v = fencingMilliseconds { (s.fencingMilliseconds, sources["fencing"]) = (v, "--fencing-ms (estimate)") }
        if let v = restartMilliseconds { (s.restartMilliseconds, sources["restart"]) = (v, "--restart-ms (estimate)") }
        return (s, sources)
    }

    /// The two timers a vcd configuration file may set; other keys are vcd's business.
    static func readConfiguration(_ path: String) throws -> (leaseTTLSeconds: Int?, reconcileIntervalSeconds: Int?) {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ValidationError("cannot read the vcd configuration \(path); give its path or leave --config out")
        }
        let parsed: Any?
        do {
            parsed = try Yams.load(yaml: text)
        } catch {
            throw ValidationError(
                "\(path) is not YAML: \(String(describing: error).split(separator: "\n").first ?? "")")
        }
        guard let settings = parsed as? [String: Any] else { return (nil, nil) }
        func integer(_ key: String) throws -> Int? {
            guard let value = settings[key] else { return nil }
            guard let n = value as? Int else { throw ValidationError("\(key) in \(path) is not a whole number") }
            return n
        }
        return (try integer("leaseTTLSeconds"), try integer("reconcileIntervalSeconds"))
    }

    /// The budget with where each value came from; the budget's own keys stay at the top
    /// level so that scripts read `.worstCaseMilliseconds`.
    struct Explanation: Encodable {
        var budget: RecoveryBudget
        var sources: [String: String]

        enum CodingKeys: String, CodingKey { case sources }

        func encode(to encoder: any Encoder) throws {
            try budget.encode(to: encoder)
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(sources, forKey: .sources)
        }
    }

    /// What this vcd does not do yet of what the arithmetic describes.
    static let notYet =
        "Not yet in this vcd: noticing a dead node by a watch (it reads the registrations every 0.5 s)."

    static func render(_ b: RecoveryBudget, sources: [String: String]) -> String {
        let s = b.settings
        var rows = b.terms.map { [$0.label, seconds($0.milliseconds), $0.why] }
        rows.append(["worst case", seconds(b.worstCaseMilliseconds), "etcd's leader lives"])
        rows += b.leaderLossTerms.map { [$0.label, "+" + seconds($0.milliseconds), $0.why] }
        rows.append(["worst case", seconds(b.worstCaseLeaderLostMilliseconds), "etcd's leader died with the node"])
        let f = b.selfFence
        let renewals = f.renewalsBeforeFence == 1 ? "1 renewal" : "\(f.renewalsBeforeFence) renewals"
        let ttl =
            b.grantedTTLSeconds == s.leaseTTLSeconds
            ? "TTL \(s.leaseTTLSeconds) s"
            : "TTL \(b.grantedTTLSeconds) s (etcd's minimum; \(s.leaseTTLSeconds) s asked)"
        let lines = [
            "A dead node's VMs run elsewhere at most \(seconds(b.worstCaseMilliseconds)) s after it died, "
                + "\(seconds(b.worstCaseLeaderLostMilliseconds)) s when etcd's leader died with it.",
            "",
            Render.table(["TERM", "SECONDS", "WHY"], rows),
            "",
            "A node cut off from etcd destroys its VMs and gives up its roles \(seconds(f.afterMilliseconds)) s after "
                + "its last renewal was sent (\(ttl) − margin \(seconds(f.marginMilliseconds)) s), after \(renewals) "
                + "every \(seconds(b.renewalPeriodMilliseconds)) s: before its lease can expire and before any "
                + "node can start its VMs. systemd's WatchdogSec must be at most \(seconds(f.watchdogAtMostMilliseconds)) s "
                + "to back it.",
            "",
            Self.notYet,
            "",
            "From: "
                + [
                    "leaseTTLSeconds \(s.leaseTTLSeconds) (\(sources["leaseTTLSeconds"] ?? "?"))",
                    "renewal every \(seconds(b.renewalPeriodMilliseconds)) s (\(sources["renewalPeriod"] ?? "?"))",
                    "margin \(seconds(s.selfFenceMarginMilliseconds)) s (\(sources["selfFenceMargin"] ?? "?"))",
                    "etcd heartbeat \(s.etcdHeartbeatMilliseconds) ms (\(sources["etcdHeartbeat"] ?? "?"))",
                    "election timeout \(s.etcdElectionTimeoutMilliseconds) ms (\(sources["etcdElectionTimeout"] ?? "?"))",
                    "reconcileIntervalSeconds \(s.reconcileIntervalSeconds) (\(sources["reconcileIntervalSeconds"] ?? "?"))",
                    "notice by \(s.notice.rawValue) (\(sources["notice"] ?? "?"))",
                    "fencing \(seconds(s.fencingMilliseconds)) s (\(sources["fencing"] ?? "?"))",
                    "restart \(seconds(s.restartMilliseconds)) s (\(sources["restart"] ?? "?"))",
                ].joined(separator: ", ") + ".",
        ]
        return lines.joined(separator: "\n")
    }

    /// `3`, `0.5`, `1.25`: milliseconds as seconds, without trailing zeros.
    static func seconds(_ milliseconds: Int) -> String {
        let whole = "\(milliseconds / 1000)"
        var fraction = String(abs(milliseconds) % 1000 + 1000).dropFirst()
        while fraction.hasSuffix("0") { fraction = fraction.dropLast() }
        return fraction.isEmpty ? whole : "\(whole).\(fraction)"
    }
}
