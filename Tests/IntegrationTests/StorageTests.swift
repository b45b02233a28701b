import Foundation
import Testing
import VCModel

/// Image formats, pool filesystems, CHAP and the declarative interface.
@Suite(.serialized) struct StorageTests {
    @Test(.timeLimit(.minutes(5)))
    func qcow2ImportGivesTheSameDiskAsTheRawImage() async throws {
        try await Testbed.with { bed in
            let qcow2 = "\(bed.root)/tiny.qcow2"
            let converted = try await sh("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", Build.tinyImage, qcow2])
            #expect(converted.status == 0, "\(converted)")
            let r = try await bed.vc(["image", "import", "tinyq", qcow2])
            #expect(r.status == 0, "\(r)")
            #expect(r.stderr.contains("100%"), "progress is shown: \(r)")
            let images = try await bed.vcJSON([GoldenImage].self, ["image", "list"])
            let image = try #require(images.first { $0.name == "tinyq" })
            #expect(image.sourceFormat == "qcow2")
            #expect(image.state == .ready)
            let rawSize = try FileManager.default.attributesOfItem(atPath: Build.tinyImage)[.size] as? UInt64
            #expect(image.sizeBytes == rawSize)
            // Bit for bit the disk the raw file holds.
            let same = try await sh("cmp", ["\(bed.poolPath)/images/tinyq.raw", Build.tinyImage])
            #expect(same.status == 0, "\(same)")
            // Deleting it removes file and key; the temporary import target is long gone.
            #expect(try await bed.vc(["image", "delete", "tinyq"]).status == 0)
            #expect(!FileManager.default.fileExists(atPath: "\(bed.poolPath)/images/tinyq.raw"))
            #expect(try await bed.targets().isEmpty)
        }
    }

    @Test(.timeLimit(.minutes(5)))
    func xfsPoolClonesCarryASmallCopyOnWriteExtentHint() async throws {
        try await Testbed.with(poolFilesystem: "xfs") { bed in
            #expect(try await bed.vcnodeStatus().pool.filesystem == "xfs")
            try await bed.importTiny()
            let name = "xfs-\(bed.id)"
            let r = try await bed.vc(["cluster", "create", name, "--image", "tiny", "--vms", "1", "--memory", "128M"])
            #expect(r.status == 0, "\(r)")
            let hint = try await sh("xfs_io", ["-c", "cowextsize", "\(bed.poolPath)/disks/\(name)/\(name)-1.raw"])
            #expect(hint.stdout.hasPrefix("[65536]"), "\(hint)")
            // The clone shares the image's extents: almost no space of its own.
            let frag = try await sh("filefrag", ["-v", "\(bed.poolPath)/disks/\(name)/\(name)-1.raw"])
            #expect(frag.stdout.contains("shared"), "\(frag)")
            #expect(try await bed.vc(["cluster", "destroy", name]).status == 0)
        }
    }

    @Test(.timeLimit(.minutes(10)))
    func chapProtectsEveryDiskAndTheVMStillBoots() async throws {
        try await Testbed.with(chap: true) { bed in
            try await bed.importTiny()
            let name = "chap-\(bed.id)"
            let r = try await bed.vc(["cluster", "create", name, "--image", "tiny", "--vms", "1", "--memory", "128M"])
            #expect(r.status == 0, "\(r)")
            // QEMU logged in with the secret: the guest boots from its disk.
            _ = try await bed.waitForConsoles(["\(name)-1"], marker: Build.bootMarker)
            let iqn = Naming.diskIQN(vm: "\(name)-1")
            let url = "iscsi://127.0.0.1:\(bed.iscsiPort)/\(iqn)/1"
            // The right initiator name without the password is refused ...
            let noPassword = try await sh("iscsi-inq", ["-i", bed.initiator, url])
            #expect(noPassword.status != 0, "\(noPassword)")
            // ... and with it, admitted.
            let withPassword = try await sh(
                "iscsi-inq",
                [
                    "-i", bed.initiator,
                    "iscsi://\(bed.chapUser)%\(bed.chapPassword)@127.0.0.1:\(bed.iscsiPort)/\(iqn)/1",
                ])
            #expect(withPassword.status == 0, "\(withPassword)")
            #expect(try await bed.vc(["cluster", "destroy", name]).status == 0)
            #expect(try await bed.leftovers(of: name, vms: 1, bridge: nil) == [])
        }
    }

    @Test(.timeLimit(.minutes(5)))
    func applyCreatesOnceAndRefusesAShapeChange() async throws {
        try await Testbed.with { bed in
            try await bed.importTiny()
            let name = "ap-\(bed.id)"
            let manifest = "\(bed.root)/cluster.yaml"
            try "name: \(name)\nimage: tiny\nvms: 1\nmemory: 128M\n".write(
                toFile: manifest, atomically: true, encoding: .utf8)
            let first = try await bed.vc(["apply", "-f", manifest])
            #expect(first.status == 0, "\(first)")
            let again = try await bed.vc(["apply", "-f", manifest, "--output", "json"])
            #expect(again.status == 0, "applying the same file again changes nothing: \(again)")
            #expect(try await bed.vcJSON([VirtualCluster].self, ["cluster", "list"]).count == 1)
            try "name: \(name)\nimage: tiny\nvms: 2\nmemory: 128M\n".write(
                toFile: manifest, atomically: true, encoding: .utf8)
            let changed = try await bed.vc(["apply", "-f", manifest])
            #expect(changed.status == 2, "\(changed)")
            #expect(changed.stderr.contains("different shape"), "\(changed)")
            #expect(changed.stderr.split(whereSeparator: \.isNewline).count == 1)
            #expect(try await bed.vc(["cluster", "destroy", name]).status == 0)
        }
    }
}
