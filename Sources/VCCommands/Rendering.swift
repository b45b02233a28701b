import Foundation
import VCModel

/// Tables for people, JSON for scripts.
enum Render {
    static func json<T: Encodable>(_ value: T) -> String {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(value)).map { String(decoding: $0, as: UTF8.self) } ?? "null"
    }

    /// Left-aligned columns separated by two spaces.
    static func table(_ header: [String], _ rows: [[String]]) -> String {
        let all = [header] + rows
        let widths = header.indices.map { i in all.map { $0.indices.contains(i) ? $0[i].count : 0 }.max() ?? 0 }
        return all.map { row in
            row.enumerated().map { i, cell in
                // Not Foundation's padding(toLength:): it goes through NSString, slow over 1,000 rows.
                i == row.count - 1 ? cell : cell + String(repeating: " ", count: max(0, widths[i] - cell.count))
            }.joined(separator: "  ")
        }.joined(separator: "\n")
    }

    static func fields(_ pairs: [(String, String)]) -> String {
        let width = pairs.map(\.0.count).max() ?? 0
        return pairs.map { $0.0.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + $0.1 }.joined(
            separator: "\n")
    }

    static func date(_ d: Date) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        return f.string(from: d)
    }

    static func cluster(_ status: ClusterStatus) -> String {
        let c = status.cluster
        var pairs: [(String, String)] = [
            ("Cluster", c.name),
            ("State", c.state.rawValue),
            ("Image", c.spec.image),
            ("VMs", "\(c.spec.vms) x \(c.spec.vcpus) vCPU, \(c.spec.memoryMiB) MiB"),
            (
                "Network",
                "\(c.network.cidr) on \(c.network.bridge), gateway \(c.network.gateway), domain \(c.network.domain)"
            ),
            ("Created", date(c.createdAt)),
        ]
        if let op = status.operation {
            pairs.append(("Operation", "\(op.kind.rawValue) by \(op.node) since \(date(op.startedAt))"))
        }
        if let m = c.message { pairs.append(("Message", m)) }
        let rows = status.vms.map { [$0.name, $0.domain, $0.ip, $0.mac, $0.node, $0.disk] }
        return fields(pairs) + "\n\n" + table(["NAME", "STATE", "IP", "MAC", "NODE", "DISK"], rows)
    }
}

/// Shows a long operation's events: a progress bar on a terminal, plain lines otherwise.
/// Writes to stderr so that stdout holds only the result.
final class ProgressView {
    private let interactive = isatty(STDERR_FILENO) == 1
    private let quiet: Bool
    private var barShown = false
    private var lastPercent = -1

    init(quiet: Bool) { self.quiet = quiet }

    func show(_ event: OperationEvent) {
        guard !quiet else { return }
        switch event.kind {
        case .progress:
            guard let done = event.completed, let total = event.total, total > 0 else { return }
            let percent = Int(Double(done) / Double(total) * 100)
            if interactive {
                let width = 30
                let filled = width * percent / 100
                let bar = String(repeating: "#", count: filled) + String(repeating: " ", count: width - filled)
                let text =
                    "\r[\(bar)] \(percent)% \(ByteSize.describe(bytes: done)) of \(ByteSize.describe(bytes: total))"
                write(text)
                barShown = true
            } else if percent / 10 != lastPercent / 10 {
                write("\(percent)% \(ByteSize.describe(bytes: done)) of \(ByteSize.describe(bytes: total))\n")
            }
            lastPercent = percent
        case .step:
            endBar()
            var line = "  " + (event.message ?? "")
            if let done = event.completed, let total = event.total { line += " (\(done)/\(total))" }
            write(line + "\n")
        case .done, .failed:
            endBar()
        }
    }

    private func endBar() {
        if barShown {
            write("\n")
            barShown = false
        }
    }

    private func write(_ s: String) { FileHandle.standardError.write(Data(s.utf8)) }
}
