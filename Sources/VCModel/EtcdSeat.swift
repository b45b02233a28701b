/// Whether a node that joins the cluster (`vcnode join`, `vcnode replace`) takes a seat in
/// etcd, and how. The cluster keeps `wanted` voting members on healthy nodes (three): a
/// new member is added as a learner, started with an empty data directory and promoted
/// once it has caught up. etcd refuses any addition while a voter that is down is still
/// listed (`--strict-reconfig-check`), and allows one learner at a time, so both are
/// refused here first, in the administrator's terms.
public enum EtcdSeat {
    public enum Decision: Sendable, Equatable {
        /// The node votes already (a join run again): nothing to do.
        case voting(voters: Int)
        /// The node is a learner (a join that stopped midway): start and promote it.
        case learner(id: UInt64)
        /// There are `voters` healthy voting members: the node is their client.
        case notNeeded(voters: Int)
        /// Add the node as a learner; `voters` vote now.
        case add(voters: Int)
    }

    public struct Refusal: Error, Sendable, Equatable {
        public var reason: String
    }

    /// `members` as etcd lists them, each with whether it answered just now; the node's
    /// own member (started or not) carries `node` as its name.
    public static func decide(
        node: String, members: [NodeRemoval.Member], wanted: Int = 3
    ) -> Result<Decision, Refusal> {
        let voters = members.filter { !$0.isLearner }
        if let own = members.first(where: { $0.name == node }) {
            return .success(own.isLearner ? .learner(id: own.id) : .voting(voters: voters.count))
        }
        let healthy = voters.filter(\.healthy)
        if healthy.count >= wanted { return .success(.notNeeded(voters: healthy.count)) }
        let down = voters.filter { !$0.healthy }.map(\.name).sorted()
        if !down.isEmpty {
            let which =
                down.count == 1
                ? "etcd voting member \(down[0]) does not"
                : "etcd voting members \(down.joined(separator: ", ")) do not"
            return .failure(
                Refusal(
                    reason:
                        "\(which) answer, and etcd adds no member while one is listed: remove it first "
                        + "('vcnode remove \(down[0])'), or run 'vcnode replace \(down[0])' on the new node"))
        }
        if let learner = members.first(where: \.isLearner) {
            return .failure(
                Refusal(
                    reason:
                        "etcd member \(learner.name) is a learner that has not been promoted yet, and etcd takes one "
                        + "at a time: finish its join ('vcnode join' on it) or remove it ('vcnode remove \(learner.name)')"
                ))
        }
        return .success(.add(voters: voters.count))
    }

    /// The `--initial-cluster` of a member being added: every member by name, the new one
    /// (listed by etcd without a name until it starts) as `node`.
    public static func initialCluster(
        node: String, peerURL: String, members: [(name: String, peerURLs: [String])]
    ) -> String {
        var entries = members.filter { !$0.name.isEmpty && $0.name != node }
            .flatMap { m in m.peerURLs.map { "\(m.name)=\($0)" } }
        entries.append("\(node)=\(peerURL)")
        return entries.sorted().joined(separator: ",")
    }
}
