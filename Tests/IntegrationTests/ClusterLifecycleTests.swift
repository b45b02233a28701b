import Foundation
import Testing
import VCModel

/// A whole cluster's life on the real stack: tiny image, two VMs booting from iSCSI
/// snapshots, DHCP and DNS, suspend to disk across a vcd restart, resume, destroy.
@Suite(.serialized) struct ClusterLifecycleTests {
    @Test(.timeLimit(.minutes(15)))
    func twoVMClusterBootsSuspendsResumesAndDestroyLeavesNothing() async throws {
        try await Testbed.with(accelerator: "auto") { bed in
            // The accelerator is proven, not assumed: KVM only when the probe booted under it.
            let status = try await bed.vcnodeStatus()
            if status.record.accelerator.kind == .kvm {
                #expect(status.record.accelerator.reason == "KVM probe booted a guest")
            } else {
                #expect(status.record.accelerator.reason.lowercased().contains("kvm"), "\(status.record.accelerator)")
            }
            #expect(status.daemons.allSatisfy { $0.healthy }, "\(status.daemons)")
            #expect(status.pool?.filesystem == "btrfs")

            try await bed.importTiny()
            let name = "lc-\(bed.id)"
            let created = try await bed.vc([
                "cluster", "create", name, "--image", "tiny", "--vms", "2", "--memory", "256M",
            ])
            #expect(created.status == 0, "\(created)")
            let cluster = try await bed.vcJSON(ClusterStatus.self, ["cluster", "show", name])
            #expect(cluster.cluster.state == .running)
            #expect(cluster.vms.map(\.domain) == ["running", "running"])
            let vms = cluster.vms.map(\.name)
            let bridge = cluster.cluster.network.bridge

            // Each VM booted from its own disk and took its address from the static table.
            let booted = try await bed.waitForConsoles(vms, marker: Build.bootMarker)
            for vm in cluster.vms {
                #expect(booted[vm.name] == "\(Build.bootMarker) host=\(vm.name) ip=\(vm.ip)")
            }
            // The cluster's names resolve through its own DNS.
            let dig = try await sh(
                "dig", ["+short", "+time=2", "@\(cluster.cluster.network.gateway)", "\(vms[1]).\(name).vc"])
            #expect(dig.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == cluster.vms[1].ip, "\(dig)")

            // What one VM writes lands in its own snapshot only, never in the other's or the image.
            _ = try await bed.waitForConsoles(vms, marker: Build.wroteMarker)
            for vm in vms {
                let own = try await sh(
                    "debugfs", ["-R", "cat /var/lib/peerless/id", "\(bed.poolPath)/disks/\(name)/\(vm).raw"])
                #expect(own.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == vm, "\(own)")
            }
            let golden = try await sh("debugfs", ["-R", "cat /var/lib/peerless/id", "\(bed.poolPath)/images/tiny.raw"])
            #expect(golden.stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "\(golden)")

            // Only the incarnation's initiator name, with the disk's own secret, may log in to a VM's target.
            let password = try #require(try await bed.catalogSecrets(name)?.disks[vms[0]])
            let url =
                "iscsi://\(Naming.chapUser(vm: vms[0]))%\(password)@127.0.0.1:\(bed.iscsiPort)/\(cluster.vms[0].disk)/1"
            let stranger = try await sh("iscsi-inq", ["-i", "iqn.2026-11.dev.example:stranger", url])
            #expect(stranger.status != 0)
            #expect((stranger.stdout + stranger.stderr).contains("Target not found"), "\(stranger)")
            // The name of the VM's running incarnation (node, VM, placement generation).
            let incarnation = try #require(try await bed.catalogCluster(name)?.vms.first?.initiator)
            let owner = try await sh("iscsi-inq", ["-i", incarnation, url])
            #expect(owner.status == 0, "\(owner)")
            #expect(owner.stdout.contains("DIRECT_ACCESS"))

            // Suspend saves every VM's memory into the pool and stops it.
            let suspended = try await bed.vc(["cluster", "suspend", name])
            #expect(suspended.status == 0, "\(suspended)")
            let afterSuspend = try await bed.vcJSON(ClusterStatus.self, ["cluster", "show", name])
            #expect(afterSuspend.cluster.state == .suspended)
            #expect(afterSuspend.vms.map(\.domain) == ["saved", "saved"])
            for vm in vms {
                #expect(FileManager.default.fileExists(atPath: "\(bed.poolPath)/saves/\(name)/\(vm).save"))
                #expect(try await bed.domainState(vm) == "shut off")
            }

            // Resume works after vcd restarted.
            bed.stopVCD()
            try await bed.startVCD()
            let resumed = try await bed.vc(["cluster", "resume", name])
            #expect(resumed.status == 0, "\(resumed)")
            let afterResume = try await bed.vcJSON(ClusterStatus.self, ["cluster", "show", name])
            #expect(afterResume.cluster.state == .running)
            for vm in vms {
                #expect(try await bed.domainState(vm) == "running")
                // Restored, not booted afresh: only a restore consumes the memory image (and a
                // resume without one fails instead of booting).
                #expect(!FileManager.default.fileExists(atPath: "\(bed.poolPath)/saves/\(name)/\(vm).save"))
            }
            // Resume of a running cluster is a no-op, not an error (safe retries).
            let again = try await bed.vc(["cluster", "resume", name])
            #expect(again.status == 0, "\(again)")

            // Destroy leaves no domain, target, snapshot, network, dnsmasq or key.
            let destroyed = try await bed.vc(["cluster", "destroy", name])
            #expect(destroyed.status == 0, "\(destroyed)")
            #expect(try await bed.leftovers(of: name, vms: 2, bridge: bridge) == [])
            #expect(try await bed.vcJSON([ClusterSummary].self, ["cluster", "list"]).isEmpty)
            #expect(try await bed.etcdKeys().filter { $0.contains("/subnets/") }.isEmpty)
        }
    }
}
