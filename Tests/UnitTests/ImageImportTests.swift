import Foundation
import Testing
import VCClient

@testable import VCDaemon
@testable import VCModel

/// What the storage node opens for an image import made on another node, which interrupted
/// imports a node discards, and how the storage node's refusals reach the importing node.
@Suite struct ImageImportTests {
    static func record(
        _ name: String = "tiny", state: GoldenImage.State = .importing, node: String = "n1", size: UInt64 = 64 << 20
    ) -> GoldenImage {
        GoldenImage(
            name: name, state: state, sourceFormat: "raw", sizeBytes: size, file: GoldenImage.file(for: name),
            node: node, importedAt: Date(timeIntervalSince1970: 0))
    }

    @Test func theStorageNodeOpensWhatTheRecordSaysForTheImporterOnly() throws {
        let opened = try ImageImport.opening(
            image: "tiny", importer: "n1", record: Self.record(), freeBytes: 1 << 30, storageNode: "stor")
        #expect(opened.file == "images/tiny.raw" && opened.sizeBytes == 64 << 20)
        #expect(opened.iqn == "iqn.2026-11.dev.peerless:import.tiny")
        // Only the importing node's initiator, and an account of the import's own.
        #expect(opened.initiator == "iqn.2026-11.dev.peerless:node.n1")
        #expect(opened.chapUser == "peerless.import.tiny")
    }

    @Test func anImportTheRecordDoesNotDescribeIsNotOpened() {
        var elsewhere = Self.record()
        elsewhere.file = "../../etc/shadow"
        let cases: [(GoldenImage?, String)] = [
            (nil, "no record"),
            (Self.record(state: .ready), "it is ready"),
            (Self.record(node: "n2"), "node n2 imports it, not n1"),
            (elsewhere, "names the pool file ../../etc/shadow"),
            (Self.record(size: 1000), "not a whole number of blocks"),
        ]
        for (record, reason) in cases {
            #expect {
                try ImageImport.opening(
                    image: "tiny", importer: "n1", record: record, freeBytes: 1 << 30, storageNode: "stor")
            } throws: { error in
                guard case .importNotOpen(let image, let why) = error as? ModelError else { return false }
                return image == "tiny" && why.contains(reason)
            }
        }
    }

    @Test func anImageLargerThanThePoolsFreeSpaceIsRefusedInOneLine() {
        #expect {
            try ImageImport.opening(
                image: "big", importer: "n1", record: Self.record("big", size: 8 << 30), freeBytes: 3 << 30,
                storageNode: "stor")
        } throws: { error in
            let text = "\(error)"
            return error as? ModelError
                == .imageDoesNotFit(image: "big", neededBytes: 8 << 30, freeBytes: 3 << 30, node: "stor")
                && text.contains("needs 8 GiB but the pool of storage node stor has 3 GiB free")
                && text.contains("vc image delete") && !text.contains("\n")
        }
        // Exactly the free space is not enough either: the pool must keep a block.
        #expect(throws: ModelError.self) {
            try ImageImport.opening(
                image: "big", importer: "n1", record: Self.record("big", size: 1 << 30), freeBytes: 1 << 30,
                storageNode: "stor")
        }
    }

    @Test func lunsAreWholeBlocks() {
        #expect(ImageImport.lunBytes(virtualSize: 512) == 512)
        #expect(ImageImport.lunBytes(virtualSize: 513) == 1024)
        #expect(ImageImport.lunBytes(virtualSize: 64 << 20) == 64 << 20)
    }

    @Test func aNodeDiscardsItsOwnImportsAndTheStorageNodeThoseOfDeadImporters() {
        let images = [
            Self.record("mine", node: "n1"), Self.record("live", node: "n2"), Self.record("dead", node: "n3"),
            Self.record("done", state: .ready, node: "n3"),
        ]
        let live: Set<String> = ["n1", "n2", "stor"]
        #expect(
            ImageImport.orphans(images, node: "n1", isStorageNode: false, live: live).map(\.name) == ["mine"])
        #expect(
            ImageImport.orphans(images, node: "stor", isStorageNode: true, live: live).map(\.name) == ["dead"])
        // Without a node list, nobody else's import is taken for dead.
        #expect(ImageImport.orphans(images, node: "stor", isStorageNode: true, live: nil).isEmpty)
        // A second node with the storage role that is not the storage node sweeps nothing of others.
        #expect(ImageImport.orphans(images, node: "stor2", isStorageNode: false, live: live).isEmpty)
    }

    @Test func theStorageNodesRefusalKeepsItsKindAndLine() {
        let storage = NodeRecord(
            name: "stor", initiator: "", api: "http://10.99.0.10:7480",
            capacity: NodeCapacity(node: "stor", cpus: 0, memoryMiB: 0),
            accelerator: Accelerator(kind: .tcg, reason: ""),
            version: "", startedAt: Date(timeIntervalSince1970: 0), roles: [.storage])
        let full = PeerCalls.refusal(
            .api(
                APIError(
                    code: "invalid", message: "image 'big' needs 8 GiB but the pool of storage node stor has 3 GiB free"
                ), status: 400),
            by: storage)
        guard case .invalid(let line) = full else {
            Issue.record("\(full)")
            return
        }
        #expect(line == "image 'big' needs 8 GiB but the pool of storage node stor has 3 GiB free")
        let busy = PeerCalls.refusal(.api(APIError(code: "conflict", message: "in use"), status: 409), by: storage)
        #expect(busy.code == "conflict" && busy.description == "storage node stor: in use")
        let down = PeerCalls.refusal(.unreachable(endpoint: storage.api, reason: "connection refused"), by: storage)
        #expect(down.code == "unavailable" && down.description.contains("start its vcd"))
    }
}
