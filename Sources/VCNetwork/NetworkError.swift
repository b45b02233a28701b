// VCNetwork: a cluster's private network on this node: its bridge (with the gateway
// address) and the dnsmasq that serves its static DHCP table and names. It owns bridges
// named vcbrN, the dnsmasq instances whose pid files it wrote, and the nftables tables
// peerless_BRIDGE of the tenant boundary; nothing else.
import VCHost

public enum NetworkError: Error, Sendable, CustomStringConvertible {
    case bridgeFailed(bridge: String, operation: String, reason: String)
    case dhcpFailed(bridge: String, reason: String)
    case firewallFailed(bridge: String, operation: String, reason: String)

    public var description: String {
        switch self {
        case .bridgeFailed(let bridge, let op, let reason): return "could not \(op) bridge \(bridge): \(reason)"
        case .dhcpFailed(let bridge, let reason): return "could not run DHCP/DNS (dnsmasq) on \(bridge): \(reason)"
        case .firewallFailed(let bridge, let op, let reason):
            return
                "could not \(op) the tenant boundary (nftables) of \(bridge): \(reason); is nftables installed (scripts/setup.sh)?"
        }
    }
}
