// Systemd: the only importer of CSystemd. Tells the service manager about readiness,
// status and liveness; it does nothing when not started by systemd.
import CSystemd

public enum SystemdNotifier {
    /// READY=1 with a status line. Returns whether systemd was told (false when not
    /// started under systemd).
    @discardableResult
    public static func ready(status: String) -> Bool { send("READY=1\nSTATUS=\(status)") }

    @discardableResult
    public static func status(_ status: String) -> Bool { send("STATUS=\(status)") }

    @discardableResult
    public static func stopping() -> Bool { send("STOPPING=1") }

    @discardableResult
    public static func watchdog() -> Bool { send("WATCHDOG=1") }

    /// How often systemd expects WATCHDOG=1, from WATCHDOG_USEC; nil when no watchdog
    /// is set for this process.
    public static var watchdogInterval: Duration? {
        var usec: UInt64 = 0
        guard sd_watchdog_enabled(0, &usec) > 0, usec > 0 else { return nil }
        return .microseconds(Int64(usec))
    }

    private static func send(_ state: String) -> Bool { sd_notify(0, state) > 0 }
}
