import Foundation
import HTTPTypes
import Hummingbird
import Libvirt
import NIOCore
import VCClient
import VCHost
import VCModel
import VCStorage

/// The HTTP API of vcd (see `API` in VCModel for the wire types). Failures answer with
/// the status of their `DaemonError` and an `APIError` body; long operations answer 200
/// with a stream of `OperationEvent` lines once their request was accepted.
struct APIRoutes: Sendable {
    let node: PeerNode
    let lifecycle: ClusterLifecycle
    let images: ImageLibrary

    /// The routes; with a `token`, every request must carry it (the TCP listener).
    func router(token: APIToken? = nil) -> Router<BasicRequestContext> {
        let router = Router()
        if let token { router.add(middleware: BearerTokenMiddleware(token: token)) }
        let v = "/\(API.version)"
        router.get("\(v)/node") { _, _ in try await respond { try await nodeStatus() } }
        router.get("\(v)/nodes") { _, _ in try await respond { try await nodeSummaries() } }
        // What a node being brought in shares with the cluster (`vcnode join --peer`).
        router.get("\(v)/join-configuration") { _, _ in try await respond { try await joinConfiguration() } }
        // The technician's hot-swap calls (vcnode), for any node.
        let drains = NodeDrain(node: node, lifecycle: lifecycle)
        router.post("\(v)/nodes/:name/cordon") { request, context in
            try await respond {
                let body = try await decode(CordonRequest.self, request, context)
                return try await drains.cordon(try context.parameters.require("name"), reason: body.reason)
            }
        }
        router.delete("\(v)/nodes/:name/cordon") { _, context in
            try await respond { try await drains.uncordon(try context.parameters.require("name")) }
        }
        router.post("\(v)/nodes/:name/drain") { request, context in
            try await stream {
                let body = try await decode(DrainRequest.self, request, context)
                return try await drains.drain(try context.parameters.require("name"), force: body.force ?? false)
            }
        }
        router.post("\(v)/nodes/:name/join") { request, context in
            try await stream {
                let body = try await decode(JoinRequest.self, request, context)
                let name = try context.parameters.require("name")
                guard name == node.name else {
                    throw DaemonError.invalid(
                        "a join starts the joining node's etcd member: run 'vcnode join' on \(name) itself, not on \(node.name)"
                    )
                }
                return try await drains.join(replacing: body.replacing)
            }
        }
        router.delete("\(v)/nodes/:name") { _, context in
            try await respond { try await drains.remove(try context.parameters.require("name")) }
        }

        router.get("\(v)/images") { _, _ in try await respond { try await images.list() } }
        router.post("\(v)/images") { request, context in
            try await stream {
                let body = try await decode(ImportImageRequest.self, request, context)
                return try await images.importImage(body)
            }
        }
        router.delete("\(v)/images/:name") { _, context in
            try await respond { () async throws -> [String: String] in
                let name = try context.parameters.require("name")
                try await images.delete(name)
                return ["deleted": name]
            }
        }

        // ?view=summary: each cluster's ClusterSummary, what `vc cluster list` shows.
        router.get("\(v)/clusters") { request, _ in
            switch request.uri.queryParameters.get("view") {
            case nil, "full": return try await respond { try await lifecycle.list() }
            case "summary": return try await respond { try await lifecycle.summaries() }
            case let view?:
                return Self.failure(.invalid("unknown view '\(view)' of the clusters: full or summary"))
            }
        }
        router.post("\(v)/clusters") { request, context in
            try await stream { try await lifecycle.create(try await decode(ClusterSpec.self, request, context)) }
        }
        router.get("\(v)/clusters/:name") { _, context in
            try await respond { try await lifecycle.status(try context.parameters.require("name")) }
        }
        router.post("\(v)/clusters/:name/suspend") { _, context in
            try await stream { try await lifecycle.suspend(try context.parameters.require("name")) }
        }
        router.post("\(v)/clusters/:name/resume") { _, context in
            try await stream { try await lifecycle.resume(try context.parameters.require("name")) }
        }
        router.delete("\(v)/clusters/:name") { _, context in
            try await stream { try await lifecycle.destroy(try context.parameters.require("name")) }
        }
        router.get("\(v)/vms/:name/console") { request, context in
            do {
                let name = try context.parameters.require("name")
                let offset = request.uri.queryParameters.get("offset").flatMap(UInt64.init) ?? 0
                let (bytes, next) = try await lifecycle.console(vm: name, offset: offset)
                var headers = HTTPFields()
                headers[.contentType] = "text/plain; charset=utf-8"
                headers[HTTPField.Name("X-Console-Offset")!] = "\(next)"
                return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
            } catch {
                return Self.failure(DaemonError.from(error))
            }
        }
        if token != nil { internalRoutes(router) }
        return router
    }

    /// What the nodes ask of each other: carry out a plan step, report domain states, keep
    /// and hand back memory images, open and close image imports and remove images (storage
    /// node). Only on the TCP listener, behind the token every node of the cluster shares.
    private func internalRoutes(_ router: Router<BasicRequestContext>) {
        let v = "/\(API.version)/internal"
        router.post("\(v)/steps") { request, context in
            try await respond { () async throws -> StepNote in
                let body = try await decode(RemoteStep.self, request, context)
                guard let step = Step(description: body.step) else {
                    throw DaemonError.invalid("unknown step '\(body.step)'")
                }
                let origins = body.origins ?? [:]
                try checkRemote(step, of: body.cluster, origins: origins)
                var runner = StepRunner(node: node, cluster: body.cluster, image: body.image)
                runner.origins = origins
                if body.undo {
                    try await runner.undoHere(step)
                    return StepNote(note: nil)
                }
                // Without its lease, a node may be the one the others have found lost:
                // what it would start now may be started elsewhere too. Undos are fine.
                guard await node.lease.id != nil else {
                    throw DaemonError.unavailable(
                        "node \(node.name) holds no lease now (cut off from etcd?); \(step) cannot run there")
                }
                return StepNote(note: try await runner.performHere(step))
            }
        }
        router.post("\(v)/domains") { request, context in
            try await respond { () async throws -> [String: String] in
                let body = try await decode(DomainStatesRequest.self, request, context)
                return try await node.domainStates(body.names)
            }
        }
        // Another node's lease, as this node's etcd connection sees it (see NodeLease).
        router.post("\(v)/lease") { request, context in
            try await respond { () async throws -> LeaseAnswer in
                let body = try await decode(LeaseQuestion.self, request, context)
                // Answered within 0.7 s, the asker waiting 1 s: the members share the time.
                let seconds = try? await node.catalog.etcd.timeToLive(lease: body.lease, by: .now + .milliseconds(700))
                return LeaseAnswer(seconds: seconds)
            }
        }
        // A live node found this one lost (see NodeLossRecovery). Holding its lease, or
        // another one than named (it registered again since, or the call is late), this
        // node is not: nothing is done. Else every VM stops now, before the others start
        // them elsewhere.
        router.post("\(v)/lost") { request, context in
            try await respond { () async throws -> LostAnswer in
                let body = try await decode(LostCall.self, request, context)
                guard await node.lease.id == nil, await node.lease.last == body.lease else {
                    node.logger.notice("told lost, but this node holds its lease", metadata: ["by": "\(body.by)"])
                    return LostAnswer(stopped: nil)
                }
                node.logger.notice("told lost: stopping every VM", metadata: ["by": "\(body.by)"])
                let stopped = await NodeLease.stopEveryGuest(node)
                node.logger.critical(
                    "self-fenced: every VM of this node is stopped",
                    metadata: ["reason": "toldLost", "by": "\(body.by)", "stopped": "\(stopped)"])
                await node.lease.toldLost()
                return LostAnswer(stopped: stopped)
            }
        }
        // Fencing a dead node's incarnations, asked of the storage node (see NodeLossRecovery).
        router.post("\(v)/fence") { request, context in
            try await respond { () async throws -> Done in
                let body = try await decode(FenceCall.self, request, context)
                guard node.has(.storage) else { throw DaemonError.invalid("node \(node.name) has no storage role") }
                try await node.disks.fence(initiators: Set(body.initiators))
                return Done()
            }
        }
        // Image imports and removals asked of the storage node (see ImageStore).
        router.post("\(v)/imports/:image") { request, context in
            try await respond { () async throws -> ImageStore.Grant in
                let body = try await decode(ImportCall.self, request, context)
                return try await ImageStore(node: node).open(
                    try context.parameters.require("image"), for: body.importer)
            }
        }
        router.post("\(v)/imports/:image/close") { request, context in
            try await respond { () async throws -> Done in
                let body = try await decode(ImportCall.self, request, context)
                try await ImageStore(node: node).close(try context.parameters.require("image"), for: body.importer)
                return Done()
            }
        }
        router.post("\(v)/images/:image/remove") { request, context in
            try await respond { () async throws -> Done in
                let body = try await decode(ImageRemoval.self, request, context)
                try await ImageStore(node: node).remove(
                    try context.parameters.require("image"), importer: body.importer)
                return Done()
            }
        }
        router.get("\(v)/saves/:cluster/:vm") { _, context in
            do {
                let path = try savePath(context)
                guard let handle = FileHandle(forReadingAtPath: path) else { return Response(status: .notFound) }
                return Response(
                    status: .ok,
                    body: ResponseBody { writer in
                        defer { try? handle.close() }
                        while let data = try handle.read(upToCount: 1 << 20), !data.isEmpty {
                            try await writer.write(ByteBuffer(bytes: data))
                        }
                        try await writer.finish(nil)
                    })
            } catch {
                return Self.failure(DaemonError.from(error))
            }
        }
        router.put("\(v)/saves/:cluster/:vm") { request, context in
            try await respond { () async throws -> Done in
                let path = try savePath(context)
                try HostFiles.makeDirectories(HostFiles.parent(path))
                let partial = path + ".partial"
                _ = FileManager.default.createFile(
                    atPath: partial, contents: nil, attributes: [.posixPermissions: 0o600])
                guard let handle = FileHandle(forWritingAtPath: partial) else {
                    throw DaemonError.failed("cannot write \(partial)")
                }
                do {
                    for try await chunk in request.body { try handle.write(contentsOf: Data(chunk.readableBytesView)) }
                    try handle.synchronize()
                    try handle.close()
                } catch {
                    try? handle.close()
                    unlink(partial)
                    throw DaemonError.failed("the memory image did not arrive whole: \(error)")
                }
                guard rename(partial, path) == 0 else {
                    throw DaemonError.failed("cannot keep \(path): \(HostFiles.lastError())")
                }
                return Done()
            }
        }
        router.delete("\(v)/saves/:cluster/:vm") { _, context in
            try await respond { () async throws -> Done in
                let path = try savePath(context)
                for p in [path, path + ".partial"] { unlink(p) }
                rmdir(HostFiles.parent(path))
                return Done()
            }
        }
    }

    /// A step another node sends must be this node's to run, about a VM of the cluster,
    /// with the disk and image paths the cluster's names give (never a path of the sender's).
    private func checkRemote(
        _ step: Step, of cluster: VirtualCluster, origins: [String: ClusterOperation.Origin]
    ) throws {
        try NameRule.checkCluster(cluster.name)
        for vm in cluster.vms {
            let expected = ClusterLayout.make(
                spec: cluster.spec, subnet: cluster.network.subnet, node: vm.node, addresses: node.addresses,
                now: cluster.createdAt
            ).vms.first { $0.name == vm.name }
            guard let expected, expected.diskFile == vm.diskFile, expected.saveFile == vm.saveFile,
                expected.diskIQN == vm.diskIQN
            else { throw DaemonError.invalid("VM \(vm.name) of the step's cluster has paths its name does not give") }
        }
        let ours: Bool
        switch step.site {
        case .storage: ours = node.has(.storage)
        case .everyHost:
            ours =
                node.has(.compute)
                && (cluster.vms.contains { $0.node == node.name } || origins.values.contains { $0.node == node.name })
        case .vmHost: ours = cluster.vms.contains { $0.name == step.vm && $0.node == node.name }
        case .origin: ours = origins[step.vm ?? ""]?.node == node.name
        }
        guard ours else {
            throw DaemonError.invalid("step '\(step)' of \(cluster.name) is not node \(node.name)'s to run")
        }
    }

    /// The pool path of a memory image, from names checked like any cluster's.
    private func savePath(_ context: BasicRequestContext) throws -> String {
        guard node.has(.storage) else { throw DaemonError.invalid("node \(node.name) has no storage role") }
        let cluster = try context.parameters.require("cluster")
        let vm = try context.parameters.require("vm")
        try NameRule.checkCluster(cluster)
        try NameRule.check(vm, kind: "VM", maxLength: NameRule.maxClusterName + 4)
        return node.pool.path("saves/\(cluster)/\(vm).save")
    }

    /// Every node the cluster knows, with its state, roles and what is placed on it. A node
    /// whose underlay address serves an etcd member (voting or learner) is an etcd member.
    func nodeSummaries() async throws -> [NodeSummary] { try await Self.summaries(node) }

    /// This node's cluster-wide settings, with etcd's voting members as etcd lists them
    /// (members joined since included, removed ones not).
    func joinConfiguration() async throws -> JoinConfiguration {
        let c = node.configuration
        // Only the URLs another machine can reach: a member on loopback alone means a
        // single-machine setup, which no other node can join.
        let reachable = { (url: String) in !VCDClient.isLoopback(url) }
        let voters = try await node.catalog.etcd.members().filter { !$0.isLearner }
        if let local = voters.first(where: { !$0.clientURLs.isEmpty && !$0.clientURLs.contains(where: reachable) }) {
            throw DaemonError.invalid(
                "etcd member \(local.name) answers on loopback only (\(local.clientURLs.joined(separator: ", "))): a single-machine setup, which no other node can join"
            )
        }
        let listed = voters.flatMap(\.clientURLs).filter(reachable)
        let endpoints = listed.isEmpty ? c.etcd.allEndpoints.filter(reachable) : listed
        guard !endpoints.isEmpty else {
            throw DaemonError.invalid(
                "node \(node.name)'s etcd answers on loopback only: a single-machine setup, which no other node can join"
            )
        }
        return JoinConfiguration(
            etcdEndpoints: endpoints, etcdPrefix: c.etcd.prefix,
            memberHeartbeatMilliseconds: c.etcd.member.heartbeatMilliseconds,
            memberElectionMilliseconds: c.etcd.member.electionMilliseconds, memberArguments: c.etcd.member.arguments,
            replaceDeadMemberAfterSeconds: c.etcd.replaceDeadMemberAfterSeconds, leaseTTLSeconds: c.leaseTTLSeconds,
            reconcileIntervalSeconds: c.reconcileIntervalSeconds, networkPrefix: c.network.prefix,
            bridgePrefix: c.network.bridgePrefix, apiPort: c.api.port)
    }

    static func summaries(_ node: PeerNode) async throws -> [NodeSummary] {
        let world = try await PlacementWorld.read(node)
        let ledger = CommitmentLedger(summaries: world.clusters)
        let placed = world.clusters.flatMap(\.vms).reduce(into: [String: Int]()) { $0[$1.node, default: 0] += 1 }
        // etcd's own list says who is a member (joined nodes too); the configured
        // endpoints when it cannot be read.
        let listed = try? await node.catalog.etcd.members()
        let etcdHosts =
            listed.map { $0.reduce(into: Set<String>()) { $0.formUnion($1.hosts) } }
            ?? node.configuration.etcd.memberHosts
        return world.views(excluding: nil).compactMap { view in
            guard let record = world.live[view.name] ?? world.members.first(where: { $0.name == view.name }) else {
                return nil
            }
            var roles = Set(record.roles)
            if let address = record.underlay, etcdHosts.contains(address) { roles.insert(.etcd) }
            return NodeSummary(
                record: record, state: view.state, roles: roles.sorted(),
                committedMiB: ledger.committedMiB(of: view.name),
                vms: placed[view.name] ?? 0, cordonReason: world.cordons[view.name])
        }
    }

    func nodeStatus() async throws -> NodeStatus {
        async let etcd = probe("etcd") { () async throws -> String in
            let n = try await node.catalog.nodes().count
            return "\(node.catalog.etcd.endpoints.joined(separator: ", ")), \(n) node(s) registered"
        }
        // Each role's daemons only: a storage node runs no libvirtd, a compute node no tgtd.
        async let libvirt = probe("libvirtd") { () async throws -> String in
            let version = try await node.hypervisor.run { try $0.libraryVersion() }
            if let problem = KVMDevice.problem() { throw DaemonError.failed(problem) }
            return "libvirt \(version), \(node.accelerator.kind.rawValue): \(node.accelerator.reason)"
        }
        async let tgt = probe("tgtd") { () async throws -> String in
            let portal = node.configuration.iscsi.portal
            if let problem = portalProblem(try await node.exporter.portals(), configured: portal) {
                throw DaemonError.failed(problem)
            }
            return "\(try await node.exporter.targets().count) target(s) on \(portal)"
        }
        var daemons = [await etcd]
        if node.has(.compute) { daemons.append(await libvirt) }
        if node.has(.storage) { daemons.append(await tgt) }
        // A count that could not be taken is nil, never 0: the daemons table says why.
        let clusters = try? await node.catalog.clusterSummaries().count
        // Only the domains Peerless made: they carry its metadata element.
        let running =
            node.has(.compute)
            ? try? await node.hypervisor.run { conn in
                try conn.allDomains().filter {
                    $0.isActive && $0.metadata(namespace: DomainDocument.metadataNamespace) != nil
                }
                .count
            } : 0
        return NodeStatus(
            record: record(), daemons: daemons, pool: node.has(.storage) ? try node.pool.status() : nil,
            clusters: clusters, runningVMs: running, committedMemoryMiB: try? await node.committedMemoryMiB())
    }

    func record() -> NodeRecord { node.record }

    private func probe(_ name: String, _ check: @Sendable () async throws -> String) async -> DaemonHealth {
        do {
            return DaemonHealth(name: name, healthy: true, detail: try await check())
        } catch {
            return DaemonHealth(name: name, healthy: false, detail: DaemonError.from(error).description)
        }
    }

    // MARK: - encoding

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.dateEncodingStrategy = .iso8601
        e.outputFormatting = [.sortedKeys]
        return e
    }()

    /// The most a request body may hold: every body is a small spec or a file path.
    static let maxBodyBytes = 1 << 20

    private func decode<T: Decodable>(_ type: T.Type, _ request: Request, _ context: BasicRequestContext) async throws
        -> T
    {
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: Self.maxBodyBytes)
        } catch is NIOTooManyBytesError {
            throw DaemonError.tooLarge(
                "the request body is larger than \(ByteSize.describe(bytes: UInt64(Self.maxBodyBytes)))")
        }
        let body = Data(buffer.readableBytesView)
        do {
            let decoder = JSONDecoder()
            decoder.dateDecodingStrategy = .iso8601
            return try decoder.decode(T.self, from: body)
        } catch {
            throw DaemonError.invalid("invalid request body: \(DecodingProblem.describeJSON(error, body: body))")
        }
    }

    private func respond<T: Encodable>(_ body: () async throws -> T) async throws -> Response {
        do {
            let value = try await body()
            var headers = HTTPFields()
            headers[.contentType] = "application/json"
            return Response(
                status: .ok, headers: headers,
                body: .init(byteBuffer: ByteBuffer(bytes: try Self.encoder.encode(value))))
        } catch {
            return Self.failure(DaemonError.from(error))
        }
    }

    private func stream(_ start: () async throws -> AsyncStream<OperationEvent>) async throws -> Response {
        let events: AsyncStream<OperationEvent>
        do {
            events = try await start()
        } catch {
            return Self.failure(DaemonError.from(error))
        }
        var headers = HTTPFields()
        headers[.contentType] = API.streamContentType
        return Response(
            status: .ok, headers: headers,
            body: ResponseBody { writer in
                for await event in events {
                    var line = try Self.encoder.encode(event)
                    line.append(0x0A)
                    try await writer.write(ByteBuffer(bytes: line))
                }
                try await writer.finish(nil)
            })
    }

    static func failure(_ error: DaemonError) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        let body = (try? Self.encoder.encode(error.apiError)) ?? Data()
        return Response(
            status: .init(code: error.httpStatus), headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }
}

public enum Version {
    public static let current = "0.1.0"
    public static let started = Date()
}
