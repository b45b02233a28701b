/// Memory sizes as people write them: `512`, `512M`, `512MiB`, `1G`, `1.5GiB`.
/// A bare number means MiB, as in `virsh` and `qemu -m`.
public enum ByteSize {
    public static func parseMiB(_ text: String, what: String = "memory") throws(ModelError) -> Int {
        let trimmed = text.trimmingSpaces().lowercased()
        var digits = ""
        var unit = ""
        for ch in trimmed {
            if unit.isEmpty && (ch.isNumber || ch == ".") { digits.append(ch) } else { unit.append(ch) }
        }
        guard let value = Double(digits), !digits.isEmpty else {
            throw .invalidSize(what: what, value: text, reason: "expected a size such as 512M or 1G")
        }
        let factor: Double
        switch unit.trimmingSpaces() {
        case "", "m", "mb", "mib": factor = 1
        case "g", "gb", "gib": factor = 1024
        case "t", "tb", "tib": factor = 1024 * 1024
        case "k", "kb", "kib": factor = 1.0 / 1024
        default:
            throw .invalidSize(what: what, value: text, reason: "unknown unit '\(unit)'; use M or G")
        }
        let mib = value * factor
        guard mib >= 1, mib < Double(Int32.max) else {
            throw .invalidSize(what: what, value: text, reason: "it is out of range")
        }
        guard mib == mib.rounded() else {
            throw .invalidSize(what: what, value: text, reason: "it is not a whole number of MiB")
        }
        return Int(mib)
    }

    /// `1536 MiB` reads better as `1.5 GiB`.
    public static func describe(bytes: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1024, unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        if unit == 0 { return "\(bytes) B" }
        let rounded = (value * 10).rounded() / 10
        let text = rounded == rounded.rounded() ? String(Int(rounded)) : String(rounded)
        return "\(text) \(units[unit])"
    }
}

extension String {
    func trimmingSpaces() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return String(s)
    }
}
