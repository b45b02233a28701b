import Foundation
import Glibc

/// Processes vcd started as daemons of their own.
public enum HostProcess {
    /// Gone, or a zombie: a daemon that forks itself into the background (dnsmasq) or is
    /// started in a session of its own has the namespace's reaper as its parent, which may
    /// take its time (dnsmasq's stop was seen to wait a whole second for it on the testbed).
    public static func exited(_ pid: Int32) -> Bool {
        if kill(pid, 0) != 0 { return true }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return true }
        // "PID (COMM) STATE …": COMM may hold spaces and parentheses; the state follows the last one.
        return stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).hasPrefix("Z")
    }
}
