import Foundation
import Testing
import VCModel

/// Image import and delete through compute-only nodes of the testbed: the node that takes
/// the import reads the file where it is and writes it over iSCSI into a temporary target
/// of the storage node, which alone allocates, exports and removes what its pool holds.
@Suite(.serialized) struct ImageAnywhereTests {
    /// Imported through n1, listed through n2, booted from by a cluster, and the cluster
    /// and the image removed through n3: the bytes land in stor's pool, and nothing of the
    /// import or the image is left on stor afterwards.
    @Test(.timeLimit(.minutes(15)))
    func anImageImportedThroughAComputeNodeServesEveryNodeAndGoesThroughAnother() async throws {
        try await NodeTestbed.with(computeNodes: 3) { bed in
            let imported = try await bed.vc("n1", ["image", "import", "tiny", Build.tinyImage])
            #expect(imported.status == 0, "\(imported)")
            // n1's progress events reached the client (vc prints every 10% when not on a tty).
            #expect(imported.stderr.contains("100% 64 MiB of 64 MiB"), "\(imported)")
            #expect(imported.stdout.contains("imported tiny: 64 MiB (raw)"), "\(imported)")
            // Written byte for byte into stor's pool; n1 holds no pool and no secret file.
            let same = try await bed.exec(
                bed.storage, ["cmp", "/var/lib/peerless/pool/images/tiny.raw", Build.tinyImage])
            #expect(same.status == 0, "\(same)")
            let n1 = try await bed.exec("n1", ["ls", "-A", "/var/lib/peerless"])
            #expect(!n1.stdout.contains("pool") && !n1.stdout.contains("import-"), "\(n1.stdout)")
            try await Self.expectNoImportOnStorage(bed, "tiny")

            let listed = try await bed.vcJSON("n2", [GoldenImage].self, ["image", "list"])
            #expect(listed.map(\.name) == ["tiny"], "\(listed)")
            #expect(listed.first?.state == .ready && listed.first?.node == "n1", "\(listed)")

            let name = "solo"
            let created = try await bed.vc(
                "n2", ["cluster", "create", name, "--image", "tiny", "--vms", "1", "--memory", "128M"])
            #expect(created.status == 0, "\(created)")
            let booted = try await bed.vc(
                "n3", ["cluster", "wait", name, "--console", Build.bootMarker, "--timeout", "300"])
            #expect(booted.status == 0, "\(booted)")
            let inUse = try await bed.vc("n3", ["image", "delete", "tiny"])
            #expect(inUse.status == 4 && inUse.stderr.contains("used by cluster(s) \(name)"), "\(inUse)")

            let destroyed = try await bed.vc("n3", ["cluster", "destroy", name])
            #expect(destroyed.status == 0, "\(destroyed)")
            let deleted = try await bed.vc("n3", ["image", "delete", "tiny"])
            #expect(deleted.status == 0 && deleted.stdout.contains("deleted image tiny"), "\(deleted)")
            try await Self.expectNothingOfImage(bed, "tiny")
            let targets = try await Self.targets(bed)
            #expect(!targets.contains("Target "), "targets left on stor: \(targets)")
        }
    }

    /// A path that is not on the node taking the import, and an image larger than the
    /// storage pool's free space: each refused in one line with what to do, through a
    /// compute node, and neither leaves a file, target, account or catalog key anywhere.
    /// The same path through the node that has the file works.
    @Test(.timeLimit(.minutes(10)))
    func aRefusedImportThroughAComputeNodeLeavesNothingAnywhere() async throws {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("peerless-anywhere-\(getpid())")
            .path
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        // 8 GiB to the guest, a few hundred KiB on disk: more than the testbed's 4 GiB pool.
        let big = "\(scratch)/big.qcow2"
        let made = try await sh("qemu-img", ["create", "-q", "-f", "qcow2", big, "8G"])
        #expect(made.status == 0, "\(made)")

        try await NodeTestbed.with(computeNodes: 3) { bed in
            // On stor only: its /var/lib/peerless is its own, n1 has another.
            let onStor = "/var/lib/peerless/only-here.img"
            try FileManager.default.copyItem(
                atPath: Build.tinyImage, toPath: "\(bed.stateDirectory(bed.storage))/only-here.img")
            let missing = try await bed.vc("n1", ["image", "import", "elsewhere", onStor])
            #expect(missing.status == 2, "\(missing)")
            Self.expectOneLine(missing, "cannot read \(onStor) on node n1: No such file or directory")

            let tooLarge = try await bed.vc("n1", ["image", "import", "big", big])
            #expect(tooLarge.status == 2, "\(tooLarge)")
            Self.expectOneLine(tooLarge, "image 'big' needs 8 GiB but the pool of storage node stor has")
            #expect(tooLarge.stderr.contains("vc image delete"), "\(tooLarge)")

            for image in ["elsewhere", "big"] { try await Self.expectNothingOfImage(bed, image) }
            let n1 = try await bed.exec("n1", ["ls", "-A", "/var/lib/peerless"])
            #expect(!n1.stdout.contains("import-"), "\(n1.stdout)")

            // The path is the receiving node's: through stor, where the file is, it imports.
            let there = try await bed.vc(bed.storage, ["image", "import", "elsewhere", onStor])
            #expect(there.status == 0, "\(there)")
            #expect(try await bed.vc("n2", ["image", "delete", "elsewhere"]).status == 0)
            try await Self.expectNothingOfImage(bed, "elsewhere")
        }
    }

    /// n1 dies while its import is open on stor (its write held back by a test delay): the
    /// storage node discards the import of a node without a lease, so its file, target,
    /// account and catalog key go, and the name can be imported again.
    @Test(.timeLimit(.minutes(10)))
    func anImportWhoseNodeDiesIsDiscardedByTheStorageNode() async throws {
        try await NodeTestbed.with(computeNodes: 3, extra: ["n1": "testing: {stepDelayMilliseconds: 120000}"]) {
            bed in
            let importing = Task { try await bed.vc("n1", ["image", "import", "doomed", Build.tinyImage]) }
            _ = try await eventually("the import to be open on stor", timeout: .seconds(60), every: .milliseconds(200))
            {
                let targets = try await Self.targets(bed)
                return (targets.contains("import.doomed") ? true : nil, targets)
            }
            let file = try await bed.exec(bed.storage, ["ls", "/var/lib/peerless/pool/images"])
            #expect(file.stdout.contains("doomed.raw"), "\(file)")
            try await bed.kill("n1")
            let client = try await importing.value
            #expect(client.status != 0, "\(client)")
            _ = try await eventually("stor to discard the import", timeout: .seconds(60), every: .seconds(1)) {
                let keys = try await bed.etcdctl(["get", "--prefix", "/peerless/images/", "--keys-only"])
                let targets = try await Self.targets(bed)
                let gone = !keys.stdout.contains("doomed") && !targets.contains("import.doomed")
                return (gone ? true : nil, "keys: \(keys.stdout) targets: \(targets)")
            }
            try await Self.expectNothingOfImage(bed, "doomed")
            let again = try await bed.vc("n2", ["image", "import", "doomed", Build.tinyImage])
            #expect(again.status == 0, "\(again)")
        }
    }

    // MARK: - what stor holds

    static func targets(_ bed: NodeTestbed) async throws -> String {
        try await bed.exec(bed.storage, ["tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target"]).stdout
    }

    /// No import target or account of `image` on stor.
    static func expectNoImportOnStorage(_ bed: NodeTestbed, _ image: String) async throws {
        let targets = try await targets(bed)
        #expect(!targets.contains("import.\(image)"), "\(targets)")
        let accounts = try await bed.exec(
            bed.storage, ["tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "account"])
        #expect(!accounts.stdout.contains("peerless.import.\(image)"), "\(accounts.stdout)")
    }

    /// Nothing of `image` anywhere: no pool file on stor, no import target or account, no
    /// catalog key.
    static func expectNothingOfImage(_ bed: NodeTestbed, _ image: String) async throws {
        try await expectNoImportOnStorage(bed, image)
        let files = try await bed.exec(bed.storage, ["find", "/var/lib/peerless/pool/images", "-mindepth", "1"])
        #expect(!files.stdout.contains("\(image).raw"), "\(files.stdout)")
        let keys = try await bed.etcdctl(["get", "--prefix", "/peerless/images/", "--keys-only"])
        #expect(!keys.stdout.contains("/images/\(image)"), "\(keys.stdout)")
    }

    static func expectOneLine(_ result: CommandResult, _ text: String) {
        let line = result.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!line.contains("\n") && line.contains(text), "\(result)")
    }
}
