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

/// How the cluster keeps its etcd voters by itself: when fewer than `wanted` voting
/// members are healthy, one healthy node that is no member takes a seat, after the dead
/// voter it replaces (a node dead in the catalog for at least the grace) is removed first.
/// Every vcd decides alone from the same inputs; only the chosen successor acts, and etcd
/// itself (one learner at a time, no addition while a dead voter is listed) stops a second.
public enum EtcdSeatKeeping {
    public struct Candidate: Sendable, Equatable {
        public var name: String
        public var state: NodeState
        public var roles: [NodeRole]
        /// It has an address on the network between the nodes (an etcd member needs one).
        public var hasUnderlay: Bool

        public init(name: String, state: NodeState, roles: [NodeRole], hasUnderlay: Bool) {
            self.name = name
            self.state = state
            self.roles = roles
            self.hasUnderlay = hasUnderlay
        }
    }

    public enum Step: Sendable, Equatable {
        /// Remove the member `id` of the dead node `dead`, then take its seat.
        case replace(dead: String, id: UInt64)
        /// Take a seat: there are fewer voters than wanted and none is down.
        case join
    }

    /// What `node` does now, if anything. `members`: etcd's list with health, each named
    /// after its node; `nodes`: every node the catalog knows; `deadFor`: how long each dead
    /// node has been seen dead.
    public static func step(
        node: String, members: [NodeRemoval.Member], nodes: [Candidate], deadFor: [String: Duration],
        grace: Duration, wanted: Int = 3
    ) -> Step? {
        guard needsSeat(node: node, members: members, wanted: wanted) else { return nil }
        let named = Set(members.map(\.name))
        // Its own learner, left by a join that stopped midway: the join finishes it.
        if members.contains(where: { $0.name == node }) { return .join }
        let voters = members.filter { !$0.isLearner }
        let healthy = voters.filter(\.healthy).count
        let state = Dictionary(nodes.map { ($0.name, $0.state) }, uniquingKeysWith: { a, _ in a })
        let down = voters.filter { !$0.healthy }
        let step: Step
        if down.isEmpty {
            step = .join
        } else {
            // Only a voter whose node is dead, and long enough: a member of a live node, or
            // of one just gone (a reboot), is not given away.
            guard
                let dead = down.filter({ state[$0.name] == .dead && (deadFor[$0.name] ?? .zero) >= grace })
                    .min(by: { $0.name < $1.name })
            else { return nil }
            // The members left must still make a quorum without it.
            guard healthy > (voters.count - 1) / 2 else { return nil }
            step = .replace(dead: dead.name, id: dead.id)
        }
        return successor(nodes: nodes, members: named) == node ? step : nil
    }

    /// Whether `node` may have a seat to take, from etcd's members alone (so that the catalog
    /// is read only then): its own learner is to be finished, or, with no other learner
    /// catching up, fewer than `wanted` voters are healthy and it is no member.
    public static func needsSeat(node: String, members: [NodeRemoval.Member], wanted: Int = 3) -> Bool {
        if let own = members.first(where: { $0.name == node }) { return own.isLearner }
        // A join under way (etcd takes one learner at a time) is left to finish.
        if members.contains(where: \.isLearner) { return false }
        return members.filter { !$0.isLearner && $0.healthy }.count < wanted
    }

    /// The node that takes the next seat: a ready node with an underlay address that is no
    /// member, compute nodes before the storage node (which keeps the disks), then by name.
    public static func successor(nodes: [Candidate], members: Set<String>) -> String? {
        nodes.filter { $0.state == .ready && $0.hasUnderlay && !members.contains($0.name) }
            .min { a, b in
                let (sa, sb) = (a.roles.contains(.storage), b.roles.contains(.storage))
                return sa != sb ? !sa : a.name < b.name
            }?.name
    }
}
