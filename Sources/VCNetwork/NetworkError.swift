// VCNetwork: a cluster's private network on this node: its bridge (with the gateway
// address) and the dnsmasq that serves its static DHCP table and names. It owns bridges
// named vcbrN and the dnsmasq instances whose pid files it wrote; nothing else.
import VCHost

public enum NetworkError: Error, Sendable, CustomStringConvertible {
    case bridgeFailed(bridge: String, operation: String, reason: String)
    case dhcpFailed(bridge: String, reason: String)

    public var description: String {
        switch self {
        case .bridgeFailed(let bridge, let op, let reason): return "could not \(op) bridge \(bridge): \(reason)"
        case .dhcpFailed(let bridge, let reason): return "could not run DHCP/DNS (dnsmasq) on \(bridge): \(reason)"
        }
    }
}
