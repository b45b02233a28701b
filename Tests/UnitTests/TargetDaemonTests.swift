import Testing

@testable import VCStorage

/// tgtd's management protocol by value: the bytes a request becomes, what an answer
/// decodes to, and what the listings say. No daemon.
@Suite struct TargetDaemonTests {
    typealias Request = TargetDaemon.Request

    /// Little-endian fields at the offsets of tgt's struct tgtadm_req on LP64 Linux.
    func u32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
        bytes[offset..<offset + 4].reversed().reduce(0) { $0 << 8 | UInt32($1) }
    }
    func u64(_ bytes: [UInt8], _ offset: Int) -> UInt64 {
        bytes[offset..<offset + 8].reversed().reduce(0) { $0 << 8 | UInt64($1) }
    }
    func parameters(_ bytes: [UInt8]) -> String { String(decoding: bytes[120...], as: UTF8.self) }

    @Test func aNewTargetIsTheHeaderThenItsNameAndANul() throws {
        let bytes = try Request.newTarget(tid: 7, name: "iqn.2026-11.dev.peerless:disk.a-1").encoded()
        let text = "targetname=iqn.2026-11.dev.peerless:disk.a-1"
        #expect(bytes.count == 120 + text.utf8.count + 1)
        #expect(u32(bytes, 0) == 1, "mode target")
        #expect(u32(bytes, 4) == 0, "op new")
        #expect(Array(bytes[8..<13]) == Array("iscsi".utf8))
        #expect(bytes[13..<72].allSatisfy { $0 == 0 })
        #expect(u32(bytes, 72) == UInt32(bytes.count), "len counts header and parameters")
        #expect(u32(bytes, 76) == 7, "tid")
        #expect(u64(bytes, 80) == 0, "sid")
        #expect(u64(bytes, 88) == .max, "no LUN, as tgtadm sends")
        #expect(u32(bytes, 104) == 0, "device type disk")
        #expect(u32(bytes, 116) == 0, "not forced")
        #expect(parameters(bytes) == text + "\0")
    }

    @Test func aListingHasNoParametersAndNoTid() throws {
        let bytes = try Request.showTargets().encoded()
        #expect(bytes.count == 120)
        #expect(u32(bytes, 0) == 1 && u32(bytes, 4) == 2, "target, show")
        #expect(u32(bytes, 72) == 120)
        #expect(u32(bytes, 76) == UInt32(bitPattern: -1))
    }

    @Test func modesAndOperationsHaveTgtsNumbers() throws {
        #expect(u32(try Request.showPortals().encoded(), 0) == 3)
        #expect(u32(try Request.showAccounts().encoded(), 0) == 7)
        let lun = try Request.newLogicalUnit(tid: 2, lun: 1, path: "/pool/d.raw").encoded()
        #expect(u32(lun, 0) == 2 && u32(lun, 4) == 0 && u64(lun, 88) == 1)
        #expect(parameters(lun) == "path=/pool/d.raw\0")
        let delete = try Request.deleteTarget(tid: 2).encoded()
        #expect(u32(delete, 4) == 1 && u32(delete, 116) == 1, "delete, forced")
        #expect(u32(try Request.bindInitiator(tid: 2, name: "iqn.x:n").encoded(), 4) == 3)
        #expect(u32(try Request.unbindInitiator(tid: 2, name: "iqn.x:n").encoded(), 4) == 4)
        let update = try Request.updateTarget(tid: 2, name: "InitialR2T", value: "No").encoded()
        #expect(u32(update, 4) == 5 && parameters(update) == "InitialR2T=No\0")
        let bind = try Request.bindAccount(tid: 2, user: "u").encoded()
        #expect(u32(bind, 0) == 7 && u32(bind, 4) == 3 && u32(bind, 76) == 2 && u32(bind, 108) == 0, "incoming")
    }

    @Test func anAccountsPasswordFollowsItsUserAndMayHoldCommas() throws {
        let request = Request.newAccount(user: "vm-1", password: "p,a=ss")
        #expect(parameters(try request.encoded()) == "user=vm-1,password=p,a=ss\0")
        #expect(!request.description.contains("p,a=ss"), "\(request)")
        #expect(request.description.contains("password=***"))
    }

    @Test func valuesTgtdWouldCutAreRefusedBeforeSending() {
        #expect(throws: StorageError.self) { try Request.newAccount(user: "a,b", password: "p").encoded() }
        #expect(throws: StorageError.self) { try Request.newLogicalUnit(tid: 1, lun: 1, path: "/a,b").encoded() }
        #expect(throws: StorageError.self) { try Request.bindInitiator(tid: 1, name: "iqn\0x").encoded() }
        let long = String(repeating: "x", count: 9000)
        #expect(throws: StorageError.self) { try Request.newTarget(tid: 1, name: long).encoded() }
    }

    @Test func anAnswerIsItsStatusAndTextWithoutTheNul() throws {
        let bytes = TargetDaemon.Response.encode(status: 0, text: "Account list:\n    u\n")
        #expect(bytes.count == 8 + 21)
        #expect(TargetDaemon.Response.length(of: bytes) == bytes.count)
        let response = try #require(TargetDaemon.Response(complete: bytes))
        #expect(response == TargetDaemon.Response(status: 0, text: "Account list:\n    u\n"))
        #expect(TargetDaemon.Response(complete: Array(bytes.dropLast())) == nil, "a short answer is not one")
        #expect(TargetDaemon.Response.length(of: Array(bytes.prefix(7))) == nil)
        #expect(TargetDaemon.Response(complete: []) == nil)
    }

    @Test func aRefusalCarriesTgtadmsMessage() throws {
        let response = try #require(TargetDaemon.Response(complete: TargetDaemon.Response.encode(status: 9, text: "")))
        #expect(response.status == 9 && response.text.isEmpty)
        let refusal = TargetDaemon.Refusal(code: response.status)
        #expect(refusal == .targetExists)
        #expect(refusal.message == "this target already exists")
        #expect(TargetDaemon.Refusal.noAccount.message == "can't find the account")
        #expect(TargetDaemon.Refusal(code: 24).message == "this device has Prevent Removal set")
        #expect(TargetDaemon.Refusal(code: 99).message == "(unknown tgtadm_errno)")
        let error = StorageError.targetRefused(subject: "iSCSI target iqn.a", action: "create", refusal: refusal)
        #expect(error.description == "could not create iSCSI target iqn.a: tgtd says this target already exists")
    }

    @Test func theSocketIsTheNamespaceDotThePort() {
        #expect(TargetDaemon.socketPath(controlPort: 0, namespace: nil) == "/var/run/tgtd/socket.0")
        #expect(TargetDaemon.socketPath(controlPort: 1234, namespace: "/tmp/t") == "/tmp/t.1234")
    }

    static let listing = """
        Target 3: iqn.2026-11.dev.peerless:disk.a-1
            System information:
                Driver: iscsi
                State: ready
            I_T nexus information:
                I_T nexus: 1
                    Initiator: iqn.2026-11.dev.peerless:node.n1 alias: none
                    Connection: 0
                        IP Address: 127.0.0.1
            LUN information:
                LUN: 0
                    Type: controller
                    Backing store path: None
                LUN: 1
                    Type: disk
                    Backing store path: /pool/disks/a/a-1.raw
                    Backing store flags:
            Account information:
                a-1
                mutual (outgoing)
            ACL information:
                iqn.2026-11.dev.peerless:node.n1
        Target 4: iqn.2026-11.dev.peerless:disk.a-2
            System information:
                Driver: iscsi
                State: ready
            I_T nexus information:
            LUN information:
                LUN: 0
                    Backing store path: None
            Account information:
            ACL information:
                iqn.2026-11.dev.peerless:node.n1
        """

    @Test func theListingGivesEachTargetsIncomingAccounts() {
        let targets = TargetExporter.parse(Self.listing)
        #expect(targets.count == 2)
        #expect(targets[0].tid == 3)
        #expect(targets[0].accounts == ["a-1"], "the outgoing account admits nobody")
        #expect(targets[0].initiators == ["iqn.2026-11.dev.peerless:node.n1"])
        #expect(targets[0].connected == ["iqn.2026-11.dev.peerless:node.n1"])
        #expect(targets[0].backingFiles == ["/pool/disks/a/a-1.raw"])
        #expect(targets[1].accounts.isEmpty)
    }

    @Test func servesComparesFileInitiatorsAndAccount() {
        let targets = TargetExporter.parse(Self.listing)
        let file = "/pool/disks/a/a-1.raw"
        let node = ["iqn.2026-11.dev.peerless:node.n1"]
        #expect(TargetExporter.serves(targets[0], file: file, to: node, account: "a-1"))
        #expect(!TargetExporter.serves(targets[0], file: file, to: node, account: nil))
        #expect(!TargetExporter.serves(targets[0], file: file, to: node, account: "other"))
        #expect(!TargetExporter.serves(targets[0], file: file, to: [], account: "a-1"))
        #expect(!TargetExporter.serves(targets[1], file: file, to: node, account: nil))
        #expect(!TargetExporter.serves(nil, file: file, to: node, account: nil))
    }

    @Test func portalsDropTheirGroup() {
        let text = "Portal: 127.0.0.1:3517,1\nPortal: [::1]:3260,1\n"
        #expect(TargetExporter.parsePortals(text) == ["127.0.0.1:3517", "[::1]:3260"])
        #expect(TargetExporter.parsePortals("").isEmpty)
    }

    /// tgtd's connection listing, as `iscsi_target_show_connections` writes it.
    @Test func theConnectionListingGivesSessionConnectionAndInitiator() {
        let text = """
            Session: 3
                Connection: 0
                    Initiator: iqn.2026-11.dev.peerless:node.n1.vm.web-1.g1
                    IP Address: 10.88.0.11
            Session: 7
                Connection: 1
                    Initiator: iqn.2026-11.dev.peerless:node.n2.vm.web-2.g4
                    IP Address: 10.88.0.12

            """
        let connections = TargetExporter.parseConnections(text)
        #expect(
            connections == [
                .init(session: 3, connection: 0, initiator: "iqn.2026-11.dev.peerless:node.n1.vm.web-1.g1"),
                .init(session: 7, connection: 1, initiator: "iqn.2026-11.dev.peerless:node.n2.vm.web-2.g4"),
            ])
        #expect(TargetExporter.parseConnections("").isEmpty)
    }

    /// Closing a connection names its session and connection in the request's header.
    @Test func closingAConnectionCarriesItsSessionAndConnection() throws {
        let request = TargetDaemon.Request.deleteConnection(tid: 4, session: 9, connection: 2)
        #expect(request.mode == .connection && request.operation == .delete && request.tid == 4)
        #expect(request.sid == 9 && request.cid == 2)
        #expect(try request.encoded().count > 0)
    }
}
