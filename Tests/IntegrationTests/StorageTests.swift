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
            #expect(try await bed.vcnodeStatus().pool?.filesystem == "xfs")
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
    func everyDiskWantsItsOwnCHAPSecretAndTheVMsStillBoot() async throws {
        try await Testbed.with { bed in
            try await bed.importTiny()
            let name = "chap-\(bed.id)"
            // Every command line seen while the cluster is made, as any local user could.
            let sampling = Task {
                var seen = Set<String>()
                while !Task.isCancelled {
                    seen.formUnion((try? Self.commandLines()) ?? [])
                    try? await Task.sleep(for: .milliseconds(10))
                }
                return seen
            }
            let r = try await bed.vc(["cluster", "create", name, "--image", "tiny", "--vms", "2", "--memory", "128M"])
            sampling.cancel()
            let commandLines = await sampling.value
            #expect(r.status == 0, "\(r)")
            let vms = ["\(name)-1", "\(name)-2"]
            // QEMU logged in with each disk's secret: both guests boot from their disks.
            _ = try await bed.waitForConsoles(vms, marker: Build.bootMarker)

            let secrets = try #require(try await bed.catalogSecrets(name))
            let passwords = vms.map { secrets.disks[$0] ?? "" }
            #expect(passwords.allSatisfy { $0.count == ClusterSecrets.passwordLength })
            #expect(Set(passwords).count == 2, "a secret per VM")
            // Nowhere else: not in what vc shows, not in the cluster's record.
            let shown = try await bed.vc(["cluster", "show", name, "--output", "json"])
            let record = try await sh("etcdctl", ["get", "\(bed.prefix)/clusters/\(name)", "--print-value-only"])
            for p in passwords {
                #expect(!shown.stdout.contains(p) && !record.stdout.contains(p))
                // Never on a command line, which every local user can read.
                #expect(commandLines.allSatisfy { !$0.contains(p) }, "a process showed a CHAP secret")
            }
            // Root-only where QEMU reads it: a private libvirt secret per VM.
            let listed = try await sh("virsh", ["-c", "qemu:///system", "secret-list"]).stdout
            for vm in vms { #expect(listed.contains(Naming.chapSecretUsage(vm: vm)), "\(listed)") }

            for (i, vm) in vms.enumerated() {
                let iqn = Naming.diskIQN(vm: vm)
                let user = Naming.chapUser(vm: vm)
                func inq(_ credentials: String) async throws -> CommandResult {
                    try await sh(
                        "iscsi-inq",
                        [
                            "-i", Naming.initiatorIQN(node: bed.node, vm: vm, generation: 1),
                            "iscsi://\(credentials)127.0.0.1:\(bed.iscsiPort)/\(iqn)/1",
                        ])
                }
                // The incarnation's initiator name alone, a wrong secret, or the other VM's: refused.
                #expect(try await inq("").status != 0)
                #expect(try await inq("\(user)%wrong-\(passwords[i])@").status != 0)
                #expect(try await inq("\(user)%\(passwords[1 - i])@").status != 0)
                // Its own: admitted.
                let ok = try await inq("\(user)%\(passwords[i])@")
                #expect(ok.status == 0, "\(ok)")
                // The right secret with another initiator name: the ACL still says no.
                let foreign = try await sh(
                    "iscsi-inq",
                    [
                        "-i", "iqn.2026-11.dev.peerless:node.other",
                        "iscsi://\(user)%\(passwords[i])@127.0.0.1:\(bed.iscsiPort)/\(iqn)/1",
                    ])
                #expect(foreign.status != 0)
            }

            #expect(try await bed.vc(["cluster", "destroy", name]).status == 0)
            #expect(try await bed.leftovers(of: name, vms: 2, bridge: nil) == [])
            // Destroy removes every copy of the secrets.
            #expect(try await bed.catalogSecrets(name) == nil)
            let after = try await sh("virsh", ["-c", "qemu:///system", "secret-list"]).stdout
            for vm in vms { #expect(!after.contains(Naming.chapSecretUsage(vm: vm)), "\(after)") }
            let accounts = try await bed.tgtadm(["--op", "show", "--mode", "account"]).stdout
            #expect(!accounts.contains(name), "\(accounts)")
        }
    }

    /// A create whose secret cannot be stored in libvirt is undone like any failed step.
    @Test(.timeLimit(.minutes(5)))
    func aSecretThatCannotBeStoredRollsTheCreateBack() async throws {
        // Named before the testbed exists (the hook names it); unique, so a crashed earlier
        // run cannot leave a secret of the same name behind.
        let name = "cf-" + String(UUID().uuidString.lowercased().prefix(6))
        try await Testbed.with(hooks: "testing:\n  failStep: secret \(name)-2") { bed in
            try await bed.importTiny()
            let r = try await bed.vc(["cluster", "create", name, "--image", "tiny", "--vms", "2", "--memory", "128M"])
            #expect(r.status == 1, "\(r)")
            #expect(r.stderr.contains("injected failure of step 'secret \(name)-2'"), "\(r)")
            #expect(r.stderr.contains("(rolled back)"), "\(r)")
            // The first VM's secret was stored: the rollback removed it with the rest.
            #expect(try await bed.leftovers(of: name, vms: 2, bridge: nil) == [])
            #expect(try await bed.catalogSecrets(name) == nil)
            let listed = try await sh("virsh", ["-c", "qemu:///system", "secret-list"]).stdout
            #expect(!listed.contains("peerless-disk-\(name)-"), "\(listed)")
            #expect(try await bed.tgtadm(["--op", "show", "--mode", "account"]).stdout.contains(name) == false)
        }
    }

    /// Every process's command line, as any local user can read them.
    static func commandLines() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: "/proc").filter { Int($0) != nil }.compactMap {
            guard let data = FileManager.default.contents(atPath: "/proc/\($0)/cmdline") else { return nil }
            return String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
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
            #expect(try await bed.vcJSON([ClusterSummary].self, ["cluster", "list"]).count == 1)
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
