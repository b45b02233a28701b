import Foundation

/// `GET /v1/join-configuration`: what a node being brought in shares with the cluster
/// (`vcnode join --peer`). Its vcd.yaml is written from these and from what is the node's
/// own (name, address, role); the API token is not among them: the technician brings it.
public struct JoinConfiguration: Codable, Sendable, Equatable {
    /// The voting etcd members' client URLs, as etcd's member list gives them.
    public var etcdEndpoints: [String]
    public var etcdPrefix: String
    /// How a member this node gets is started: the other members' timers.
    public var memberHeartbeatMilliseconds: Int
    public var memberElectionMilliseconds: Int
    public var memberArguments: [String]
    public var replaceDeadMemberAfterSeconds: Int
    public var leaseTTLSeconds: Int
    public var reconcileIntervalSeconds: Int
    /// Cluster networks and their bridges (`network.prefix`, `network.bridgePrefix`).
    public var networkPrefix: String
    public var bridgePrefix: String
    /// The port every node's API listens on.
    public var apiPort: Int

    public init(
        etcdEndpoints: [String], etcdPrefix: String, memberHeartbeatMilliseconds: Int, memberElectionMilliseconds: Int,
        memberArguments: [String], replaceDeadMemberAfterSeconds: Int, leaseTTLSeconds: Int,
        reconcileIntervalSeconds: Int, networkPrefix: String, bridgePrefix: String, apiPort: Int
    ) {
        self.etcdEndpoints = etcdEndpoints
        self.etcdPrefix = etcdPrefix
        self.memberHeartbeatMilliseconds = memberHeartbeatMilliseconds
        self.memberElectionMilliseconds = memberElectionMilliseconds
        self.memberArguments = memberArguments
        self.replaceDeadMemberAfterSeconds = replaceDeadMemberAfterSeconds
        self.leaseTTLSeconds = leaseTTLSeconds
        self.reconcileIntervalSeconds = reconcileIntervalSeconds
        self.networkPrefix = networkPrefix
        self.bridgePrefix = bridgePrefix
        self.apiPort = apiPort
    }

    /// The new node's vcd.yaml: these settings and the node's own. Its API listens on its
    /// underlay address, where the other nodes reach it. Every value is written as JSON,
    /// which YAML reads as it is.
    public func vcdYAML(node: String, underlay: String, roles: [NodeRole], peer: String) -> String {
        func json(_ value: some Encodable) -> String {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            return (try? encoder.encode(value)).map { String(decoding: $0, as: UTF8.self) } ?? "null"
        }
        return """
            # Written by 'vcnode join --peer \(peer)': the cluster's settings as that node gave
            # them, and this node's own (name, address, roles).
            node: \(json(node))
            roles: \(json(roles.map(\.rawValue)))
            api: {host: \(json(underlay)), port: \(apiPort)}
            etcd:
              endpoints: \(json(etcdEndpoints))
              prefix: \(json(etcdPrefix))
              member: {heartbeatMilliseconds: \(memberHeartbeatMilliseconds), electionMilliseconds: \(memberElectionMilliseconds), arguments: \(json(memberArguments))}
              replaceDeadMemberAfterSeconds: \(replaceDeadMemberAfterSeconds)
            network: {underlay: \(json(underlay)), prefix: \(json(networkPrefix)), bridgePrefix: \(json(bridgePrefix))}
            leaseTTLSeconds: \(leaseTTLSeconds)
            reconcileIntervalSeconds: \(reconcileIntervalSeconds)

            """
    }
}
