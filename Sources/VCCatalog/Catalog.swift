import Foundation
import VCModel

/// A value read from the catalog together with the revision a CAS must compare against.
public struct Versioned<Value: Sendable>: Sendable {
    public var value: Value
    public var modRevision: Int64
}

/// The typed catalog: every key Peerless keeps in etcd is named here and nowhere else.
///
///     PREFIX/images/NAME      GoldenImage
///     PREFIX/clusters/NAME    VirtualCluster
///     PREFIX/subnets/N        name of the cluster that holds subnet N
///     PREFIX/ops/CLUSTER      ClusterOperation running on that cluster (its journal)
///     PREFIX/secrets/CLUSTER  ClusterSecrets: its disks' CHAP passwords, made with it
///     PREFIX/nodes/NAME       NodeRecord, under the node's lease: the node is alive
///     PREFIX/members/NAME     NodeRecord as last registered, kept: the node is known
///     PREFIX/cordons/NAME     why the node takes no new VMs
///     PREFIX/removed/NAME     the node was taken out (`vcnode remove`): it does not
///                             register again under that name
///     PREFIX/commitments/NAME memory committed on the node (MiB); its revision guards
///                             every placement on the node
///
/// Values are JSON in an envelope that carries a schema number. Every write that depends
/// on what was read is a transaction guarded by that key's revision.
public struct Catalog: Sendable {
    public static let schema = 1
    public let etcd: EtcdClient
    public let prefix: String
    /// Every cluster's summary, kept by a watch while vcd runs `clusterMirror.follow` (see
    /// `clusterSummaries()`); shared by every copy of this catalog.
    public let clusterMirror: PrefixMirror<ClusterSummary>

    public init(etcd: EtcdClient, prefix: String = "/peerless") {
        self.etcd = etcd
        let prefix = prefix.hasSuffix("/") ? String(prefix.dropLast()) : prefix
        self.prefix = prefix
        self.clusterMirror = PrefixMirror(prefix: "\(prefix)/clusters/") {
            (kv) throws(CatalogError) -> ClusterSummary in
            try Self.decode(kv)
        }
    }

    // MARK: keys

    public func imageKey(_ name: String) -> String { "\(prefix)/images/\(name)" }
    public func clusterKey(_ name: String) -> String { "\(prefix)/clusters/\(name)" }
    public func subnetKey(_ index: Int) -> String { "\(prefix)/subnets/\(index)" }
    public func operationKey(_ cluster: String) -> String { "\(prefix)/ops/\(cluster)" }
    public func nodeKey(_ name: String) -> String { "\(prefix)/nodes/\(name)" }
    public func secretsKey(_ cluster: String) -> String { "\(prefix)/secrets/\(cluster)" }
    public func memberKey(_ name: String) -> String { "\(prefix)/members/\(name)" }
    public func cordonKey(_ name: String) -> String { "\(prefix)/cordons/\(name)" }
    public func removedKey(_ name: String) -> String { "\(prefix)/removed/\(name)" }
    public func commitmentKey(_ node: String) -> String { "\(prefix)/commitments/\(node)" }
    public func gatewayKey(_ cluster: String) -> String { "\(prefix)/gateways/\(cluster)" }

    // MARK: images

    public func image(_ name: String) async throws(CatalogError) -> Versioned<GoldenImage>? {
        try await read(imageKey(name))
    }

    public func images() async throws(CatalogError) -> [GoldenImage] {
        try await readAll("\(prefix)/images/").map(\.value)
    }

    /// Records a new image in state `importing`; fails if the name is taken.
    public func createImage(_ image: GoldenImage) async throws(CatalogError) {
        let key = imageKey(image.name)
        guard try await etcd.txn([.absent(key)], success: [.put(key, try encode(image))]) else {
            throw .alreadyExists(kind: "image", name: image.name)
        }
    }

    public func update(_ image: Versioned<GoldenImage>) async throws(CatalogError) {
        let key = imageKey(image.value.name)
        guard
            try await etcd.txn(
                [.modRevision(key, equals: image.modRevision)], success: [.put(key, try encode(image.value))])
        else {
            throw .conflict(key: key)
        }
    }

    public func deleteImage(_ name: String) async throws(CatalogError) { try await etcd.delete(imageKey(name)) }

    // MARK: clusters

    public func cluster(_ name: String) async throws(CatalogError) -> Versioned<VirtualCluster>? {
        try await read(clusterKey(name))
    }

    public func clusters() async throws(CatalogError) -> [Versioned<VirtualCluster>] {
        try await readAll("\(prefix)/clusters/")
    }

    /// Every cluster's ``ClusterSummary``, sorted by name, from the same records as
    /// `clusters()` and never staler than them: served by ``clusterMirror`` when a
    /// probe of etcd shows it current, else read from etcd. Only what a summary holds is
    /// decoded, and only of the records whose bytes changed, which a listing of many
    /// clusters notices.
    public func clusterSummaries() async throws(CatalogError) -> [ClusterSummary] {
        try await clusterMirror.values(from: etcd)
    }

    /// Writes a cluster's record if nobody changed it since it was read.
    public func update(_ cluster: Versioned<VirtualCluster>) async throws(CatalogError) {
        let key = clusterKey(cluster.value.name)
        guard
            try await etcd.txn(
                [.modRevision(key, equals: cluster.modRevision)], success: [.put(key, try encode(cluster.value))])
        else {
            throw .conflict(key: key)
        }
    }

    public func usedSubnets() async throws(CatalogError) -> Set<Int> {
        let kvs = try await etcd.list(prefix: "\(prefix)/subnets/")
        return Set(kvs.compactMap { Int($0.key.split(separator: "/").last ?? "") })
    }

    /// Atomically records a new cluster with its disks' secrets, claims its subnet and opens
    /// its create operation. Fails with `.alreadyExists` when the name is taken, `.conflict`
    /// when the subnet was claimed by a concurrent create (pick another and retry).
    ///
    /// `commitments` are the nodes the placement put VMs on, each with the revision of its
    /// commitment key the placement was decided from: if another create or resume placed
    /// VMs on one of them since, the transaction fails with `.conflict` and the caller
    /// places again from fresh numbers, so two placements that fit alone but not together
    /// never both win.
    public func beginCreate(
        _ cluster: VirtualCluster, secrets: ClusterSecrets, operation: ClusterOperation,
        commitments: [Commitment] = []
    ) async throws(CatalogError) {
        let ck = clusterKey(cluster.name)
        let sk = subnetKey(cluster.network.subnet)
        let (guards, puts) = try commitmentOps(commitments)
        let ok = try await etcd.txn(
            [.absent(ck), .absent(sk), .absent(operationKey(cluster.name)), .present(nodeKey(operation.node))]
                + guards,
            success: [
                .put(ck, try encode(cluster)), .put(sk, Array(cluster.name.utf8)),
                .put(secretsKey(cluster.name), try encode(secrets)),
                .put(operationKey(cluster.name), try encode(operation)),
            ] + puts)
        guard ok else {
            if try await etcd.get(nodeKey(operation.node)) == nil { throw .unregistered(node: operation.node) }
            if try await etcd.get(ck) != nil { throw .alreadyExists(kind: "cluster", name: cluster.name) }
            if try await etcd.get(sk) != nil || commitments.isEmpty { throw .conflict(key: sk) }
            throw .conflict(key: commitmentKey(commitments[0].node))
        }
    }

    /// A node's commitment as a placement read it, and what it becomes.
    public struct Commitment: Sendable, Equatable {
        public var node: String
        /// The key's revision when read; nil when it did not exist.
        public var readRevision: Int64?
        public var committedMiB: Int

        public init(node: String, readRevision: Int64?, committedMiB: Int) {
            self.node = node
            self.readRevision = readRevision
            self.committedMiB = committedMiB
        }
    }

    private func commitmentOps(_ commitments: [Commitment]) throws(CatalogError) -> ([Compare], [TxnOp]) {
        var guards: [Compare] = []
        var puts: [TxnOp] = []
        for c in commitments {
            let key = commitmentKey(c.node)
            guards.append(c.readRevision.map { .modRevision(key, equals: $0) } ?? .absent(key))
            puts.append(.put(key, try encode(c.committedMiB)))
        }
        return (guards, puts)
    }

    /// Every node's commitment key with its revision.
    public func commitments() async throws(CatalogError) -> [String: Versioned<Int>] {
        var out: [String: Versioned<Int>] = [:]
        for kv in try await etcd.list(prefix: "\(prefix)/commitments/") {
            let name = String(kv.key.split(separator: "/").last ?? "")
            out[name] = Versioned(value: try decode(kv), modRevision: kv.modRevision)
        }
        return out
    }

    /// Opens an operation on an existing cluster and moves it to `state`, provided nobody
    /// changed the cluster since it was read, no other operation holds it and the node
    /// that runs it is registered (a node without a lease starts nothing: the others would
    /// take its operation over at once). With `placed`, the cluster's VMs move to new
    /// placements in the same transaction, guarded by `commitments` as in `beginCreate`.
    public func begin(
        _ operation: ClusterOperation, on cluster: Versioned<VirtualCluster>, state: ClusterState, now: Date,
        placed: VirtualCluster? = nil, commitments: [Commitment] = []
    ) async throws(CatalogError) -> Versioned<VirtualCluster> {
        var updated = placed ?? cluster.value
        updated.state = state
        updated.updatedAt = now
        updated.message = nil
        let ck = clusterKey(updated.name)
        let (guards, puts) = try commitmentOps(commitments)
        let ok = try await etcd.txn(
            [
                .modRevision(ck, equals: cluster.modRevision), .absent(operationKey(updated.name)),
                .present(nodeKey(operation.node)),
            ] + guards,
            success: [.put(ck, try encode(updated)), .put(operationKey(updated.name), try encode(operation))] + puts)
        guard ok else {
            if try await etcd.get(nodeKey(operation.node)) == nil { throw .unregistered(node: operation.node) }
            if let running = try await self.operation(updated.name) {
                throw .busy(cluster: updated.name, operation: running)
            }
            throw .conflict(key: commitments.isEmpty ? ck : commitmentKey(commitments[0].node))
        }
        guard let fresh = try await self.cluster(updated.name) else {
            throw .notFound(kind: "cluster", name: updated.name)
        }
        return fresh
    }

    /// Closes an operation: writes the cluster's final record and removes the journal, in
    /// one transaction guarded by the operation's identity. A retry after a lost reply
    /// finds its own write in place and succeeds.
    public func finish(_ operation: ClusterOperation, cluster: VirtualCluster) async throws(CatalogError) {
        let ok = try await etcd.txn(
            [.value(operationKey(cluster.name), equals: try encode(operation))],
            success: [.put(clusterKey(cluster.name), try encode(cluster)), .delete(operationKey(cluster.name))])
        if ok { return }
        let journal = try await self.operation(cluster.name)
        let record = try await self.cluster(cluster.name)?.value
        // Compared as stored: dates keep whole seconds in the catalog.
        guard journal == nil, let record, try encode(record) == encode(cluster) else {
            throw .conflict(key: operationKey(cluster.name))
        }
    }

    /// Removes every trace of a cluster (after destroy or a rolled-back create). A retry
    /// after a lost reply finds nothing left and succeeds.
    public func forget(_ cluster: VirtualCluster, operation: ClusterOperation) async throws(CatalogError) {
        let ok = try await etcd.txn(
            [.value(operationKey(cluster.name), equals: try encode(operation))],
            success: [
                .delete(clusterKey(cluster.name)), .delete(subnetKey(cluster.network.subnet)),
                .delete(secretsKey(cluster.name)), .delete(operationKey(cluster.name)),
                .delete(gatewayKey(cluster.name)),
            ])
        if ok { return }
        let journal = try await self.operation(cluster.name)
        let record = try await self.cluster(cluster.name)
        guard journal == nil, record == nil else { throw .conflict(key: operationKey(cluster.name)) }
    }

    /// Drops a journal entry whose cluster is gone, only if it is still that entry.
    public func dropOperation(_ operation: ClusterOperation) async throws(CatalogError) {
        try await etcd.txn(
            [.value(operationKey(operation.cluster), equals: try encode(operation))],
            success: [.delete(operationKey(operation.cluster))])
    }

    /// The CHAP passwords of a cluster's disks; nil for a cluster made before they existed.
    public func secrets(_ cluster: String) async throws(CatalogError) -> ClusterSecrets? {
        let v: Versioned<ClusterSecrets>? = try await read(secretsKey(cluster))
        return v?.value
    }

    /// The clusters whose disk secrets exist (key names only; the secrets are not read).
    public func clustersWithSecrets() async throws(CatalogError) -> Set<String> {
        Set(try await etcd.list(prefix: "\(prefix)/secrets/").map { String($0.key.split(separator: "/").last ?? "") })
    }

    // MARK: operations

    public func operation(_ cluster: String) async throws(CatalogError) -> ClusterOperation? {
        let v: Versioned<ClusterOperation>? = try await read(operationKey(cluster))
        return v?.value
    }

    public func operations() async throws(CatalogError) -> [ClusterOperation] {
        try await readAll("\(prefix)/ops/").map(\.value)
    }

    // MARK: nodes

    /// The node's live key under its lease, and its lasting member record, together;
    /// refused (`CatalogError.removed`) for a node that was taken out.
    public func register(_ node: NodeRecord, lease: Int64) async throws(CatalogError) {
        // A live registration of another machine keeps its name; one of this machine (a
        // vcd restarted within its TTL), or of a machine unknown, is taken over.
        let current = try await etcd.get(nodeKey(node.name))
        if let current, let held = Self.otherMachine(current, than: node.machine) {
            throw .nameInUse(node: node.name, api: held.api)
        }
        let registered = try await etcd.txn(
            [
                .absent(removedKey(node.name)),
                current.map { .modRevision(nodeKey(node.name), equals: $0.modRevision) } ?? .absent(nodeKey(node.name)),
            ],
            success: [
                .put(nodeKey(node.name), try encode(node), lease: lease), .put(memberKey(node.name), try encode(node)),
            ])
        if !registered {
            if try await etcd.get(removedKey(node.name)) != nil { throw .removed(node: node.name) }
            throw .conflict(key: nodeKey(node.name))
        }
    }

    /// The live registration of `name` when another machine than `machine` made it (nil
    /// when the name is free, this machine's, or of a machine unknown).
    public func heldByAnotherMachine(_ name: String, machine: String?) async throws(CatalogError) -> NodeRecord? {
        guard let current = try await etcd.get(nodeKey(name)) else { return nil }
        return Self.otherMachine(current, than: machine)
    }

    private static func otherMachine(_ kv: KeyValue, than ours: String?) -> NodeRecord? {
        guard let held: NodeRecord = try? decode(kv), let machine = held.machine, let ours, machine != ours else {
            return nil
        }
        return held
    }

    /// Takes a node out: its live key, member record, cordon and commitment go, and a
    /// mark stays that keeps its vcd from registering again. Guarded by the commitment's
    /// revision as read (nil: absent), so that nothing placed on the node since is lost,
    /// and by its state as read; false when either changed. `lease`, the node's
    /// registration lease as read before, is revoked after: its vcd, renewing in vain,
    /// registers again and is refused.
    public func remove(
        node name: String, commitmentRevision: Int64?, lease: Int64?, by remover: String
    ) async throws(CatalogError) -> Bool {
        let key = commitmentKey(name)
        // As read: dead stays unregistered, alive stays cordoned (a node that came back
        // ready, or an uncordon, since then fails the guard).
        let state: Compare = lease == nil ? .absent(nodeKey(name)) : .present(cordonKey(name))
        let removed = try await etcd.txn(
            [commitmentRevision.map { .modRevision(key, equals: $0) } ?? .absent(key), state],
            success: [
                .delete(nodeKey(name)), .delete(memberKey(name)), .delete(cordonKey(name)), .delete(key),
                .put(removedKey(name), Array("removed through \(remover)".utf8)),
            ])
        // Sent again after a lost reply (`RetryPolicy`), the guard fails: the mark says
        // it was this removal that landed.
        if !removed {
            guard try await etcd.get(removedKey(name)) != nil else { return false }
        }
        if let lease, lease != 0 {
            // Revoked or not (etcd may be electing after the member left), the vcd there
            // finds its registration gone at its next renewal (see `NodeLease`).
            try? await RetryPolicy.catalogWrite.run { () async throws(CatalogError) in
                try await etcd.revoke(lease: lease)
            }
        }
        return true
    }

    /// The lease a node's live key is under, nil when it is not registered.
    public func registrationLease(_ name: String, by deadline: ContinuousClock.Instant? = nil)
        async throws(CatalogError) -> Int64?
    {
        try await etcd.get(nodeKey(name), by: deadline)?.lease
    }

    /// Every node that ever registered, alive or not.
    public func members(by deadline: ContinuousClock.Instant? = nil) async throws(CatalogError) -> [NodeRecord] {
        try await readAll("\(prefix)/members/", by: deadline).map(\.value)
    }

    /// Nodes closed to new VMs, with the reason given.
    public func cordons() async throws(CatalogError) -> [String: String] {
        var out: [String: String] = [:]
        for kv in try await etcd.list(prefix: "\(prefix)/cordons/") {
            out[String(kv.key.split(separator: "/").last ?? "")] = String(decoding: kv.value, as: UTF8.self)
        }
        return out
    }

    /// Closes `node` to new VMs, saying why. Idempotent; a second reason replaces the first.
    public func cordon(_ node: String, reason: String) async throws(CatalogError) {
        try await etcd.put(cordonKey(node), Array(reason.utf8))
    }

    /// Opens `node` to new VMs again. Idempotent.
    public func uncordon(_ node: String) async throws(CatalogError) { try await etcd.delete(cordonKey(node)) }

    /// Moves an operation whose node holds no lease any more to `node`, so that it is
    /// finished or undone by a live one. Fails (nil) if the entry changed, its owner is
    /// alive again, or `node` itself is not registered (its lease lapsed, or it was
    /// removed): a node without a lease takes nothing over.
    public func takeOver(_ operation: ClusterOperation, by node: String) async throws(CatalogError) -> ClusterOperation?
    {
        var moved = operation
        moved.node = node
        let ok = try await etcd.txn(
            [
                .value(operationKey(operation.cluster), equals: try encode(operation)),
                .absent(nodeKey(operation.node)), .present(nodeKey(node)),
            ],
            success: [.put(operationKey(operation.cluster), try encode(moved))])
        return ok ? moved : nil
    }

    // MARK: gateway addresses

    /// The node holding each cluster's gateway address, by cluster (see
    /// `GatewayElection`). A key lives under its holder's node lease.
    public func gatewayHolders() async throws(CatalogError) -> [String: String] {
        var out: [String: String] = [:]
        for kv in try await etcd.list(prefix: "\(prefix)/gateways/") {
            out[String(kv.key.split(separator: "/").last ?? "")] = String(decoding: kv.value, as: UTF8.self)
        }
        return out
    }

    /// Claims a cluster's gateway address for `node` under its lease, if nobody holds it
    /// and the cluster still exists. True when `node` holds it afterwards.
    public func claimGateway(_ cluster: String, for node: String, lease: Int64) async throws(CatalogError) -> Bool {
        let key = gatewayKey(cluster)
        if try await etcd.txn(
            [.absent(key), .present(clusterKey(cluster))], success: [.put(key, Array(node.utf8), lease: lease)])
        {
            return true
        }
        return try await etcd.get(key)?.value == Array(node.utf8)
    }

    /// Gives up a cluster's gateway address, only if `node` still holds it.
    public func resignGateway(_ cluster: String, from node: String) async throws(CatalogError) {
        try await etcd.txn(
            [.value(gatewayKey(cluster), equals: Array(node.utf8))], success: [.delete(gatewayKey(cluster))])
    }

    public func nodes() async throws(CatalogError) -> [NodeRecord] {
        try await readAll("\(prefix)/nodes/").map(\.value)
    }

    /// The lease each live node's registration is under, by node name.
    public func registrationLeases() async throws(CatalogError) -> [String: Int64] {
        var out: [String: Int64] = [:]
        for kv in try await etcd.list(prefix: "\(prefix)/nodes/") {
            out[String(kv.key.dropFirst("\(prefix)/nodes/".count))] = kv.lease
        }
        return out
    }

    // MARK: encoding

    private struct Envelope<T: Codable>: Codable {
        var schema: Int
        var value: T
    }

    public func encode<T: Codable>(_ value: T) throws(CatalogError) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys]
        do {
            return Array(try encoder.encode(Envelope(schema: Self.schema, value: value)))
        } catch {
            throw .corrupt(key: "(new value)", reason: "\(error)")
        }
    }

    func decode<T: Codable>(_ kv: KeyValue) throws(CatalogError) -> T { try Self.decode(kv) }

    private static func decode<T: Codable>(_ kv: KeyValue) throws(CatalogError) -> T {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        do {
            let envelope = try decoder.decode(Envelope<T>.self, from: Data(kv.value))
            guard envelope.schema <= Self.schema else {
                throw CatalogError.corrupt(
                    key: kv.key, reason: "schema \(envelope.schema) is newer than this vcd (\(Self.schema))")
            }
            return envelope.value
        } catch let e as CatalogError {
            throw e
        } catch {
            throw .corrupt(key: kv.key, reason: "\(error)")
        }
    }

    private func read<T: Codable & Sendable>(_ key: String) async throws(CatalogError) -> Versioned<T>? {
        guard let kv = try await etcd.get(key) else { return nil }
        return Versioned(value: try decode(kv), modRevision: kv.modRevision)
    }

    func readAll<T: Codable & Sendable>(_ prefix: String, by deadline: ContinuousClock.Instant? = nil)
        async throws(CatalogError) -> [Versioned<T>]
    {
        var out: [Versioned<T>] = []
        for kv in try await etcd.list(prefix: prefix, by: deadline) {
            out.append(Versioned(value: try decode(kv), modRevision: kv.modRevision))
        }
        return out
    }
}
