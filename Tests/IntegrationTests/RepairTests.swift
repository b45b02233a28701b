import Foundation
import Testing
import VCModel

/// What the reconciler promises: a running cluster stays running through a dead QEMU and
/// a restart of tgtd, without anyone typing a command.
@Suite(.serialized) struct RepairTests {
    @Test(.timeLimit(.minutes(10)))
    func deadVMAndRestartedTgtdAreRepairedWithoutAnyCommand() async throws {
        try await Testbed.with(hooks: "reconcileIntervalSeconds: 2") { bed in
            try await bed.importTiny()
            let name = "rp-\(bed.id)"
            let created = try await bed.vc([
                "cluster", "create", name, "--image", "tiny", "--vms", "2", "--memory", "128M",
            ])
            #expect(created.status == 0, "\(created)")
            let vms = ["\(name)-1", "\(name)-2"]
            _ = try await bed.waitForConsoles(vms, marker: Build.wroteMarker)
            let exported = try await bed.targets().map(\.iqn).sorted()
            #expect(exported.count == 2)

            // tgtd restarted: every target is gone until vcd exports them again.
            try await bed.stopTGTD()
            try await bed.startTGTD()
            _ = try await eventually("both disks exported again", timeout: .seconds(60)) {
                let now = try await bed.targets().map(\.iqn).sorted()
                return (now == exported ? true : nil, "\(now)")
            }
            // ... each with its CHAP account bound again: the node's name alone gets nothing.
            let remade = try await bed.vcJSON(ClusterStatus.self, ["cluster", "show", name])
            for vm in remade.vms {
                let open = try await sh(
                    "iscsi-inq",
                    [
                        "-i", Naming.initiatorIQN(node: bed.node, vm: vm.name, generation: 1),
                        "iscsi://127.0.0.1:\(bed.iscsiPort)/\(vm.disk)/1",
                    ])
                #expect(open.status != 0, "a re-made target admits a login without the secret: \(open)")
            }
            let accounts = try await bed.tgtadm(["--op", "show", "--mode", "target"]).stdout
            for vm in vms { #expect(accounts.contains(Naming.chapUser(vm: vm)), "\(accounts)") }

            // A target whose ACL lost its VM's initiator name gets it back; targets that need
            // nothing are left as they are (same tids across passes).
            let settled = try await bed.targets().sorted { $0.tid < $1.tid }
            let incarnation = { (iqn: String) in
                Naming.initiatorIQN(node: bed.node, vm: String(iqn.split(separator: ".").last ?? ""), generation: 1)
            }
            let incarnations = Set(vms.map { Naming.initiatorIQN(node: bed.node, vm: $0, generation: 1) })
            // ACL lines naming the VMs' incarnations (not their sessions, listed as I_T nexus).
            let bindings = {
                var section = ""
                var count = 0
                for line in try await bed.tgtadm(["--op", "show", "--mode", "target"]).stdout.split(separator: "\n") {
                    let text = line.trimmingCharacters(in: .whitespaces)
                    if line.hasPrefix("Target ") || text.hasSuffix("information:") { section = text }
                    if section == "ACL information:" && incarnations.contains(text) { count += 1 }
                }
                return count
            }
            #expect(try await bindings() == 2)
            let unbound = try await bed.tgtadm([
                "--op", "unbind", "--mode", "target", "--tid", "\(settled[0].tid)", "--initiator-name",
                incarnation(settled[0].iqn),
            ])
            #expect(unbound.status == 0, "\(unbound)")
            _ = try await eventually("the ACL to be repaired", timeout: .seconds(60)) {
                let n = try await bindings()
                return (n == 2 ? true : nil, "\(n) targets bound to their incarnation")
            }
            try await Task.sleep(for: .seconds(5))
            #expect(try await bed.targets().sorted { $0.tid < $1.tid }.map(\.tid) == settled.map(\.tid))

            // Still bound to this node's initiator only: even with the disk's secret, another
            // initiator name is not let in.
            let cluster = try await bed.vcJSON(ClusterStatus.self, ["cluster", "show", name])
            let password = try #require(try await bed.catalogSecrets(name)?.disks[vms[0]])
            let url =
                "iscsi://\(Naming.chapUser(vm: vms[0]))%\(password)@127.0.0.1:\(bed.iscsiPort)/\(cluster.vms[0].disk)/1"
            let stranger = try await sh("iscsi-inq", ["-i", "iqn.2026-11.dev.example:stranger", url])
            #expect((stranger.stdout + stranger.stderr).contains("Target not found"), "\(stranger)")

            // A VM whose QEMU died is started again, and boots from its re-exported disk:
            // its console (appended to) shows a second boot that wrote to the disk.
            let killed = try await sh("virsh", ["-c", "qemu:///system", "destroy", vms[0]])
            #expect(killed.status == 0, "\(killed)")
            _ = try await eventually("the dead VM to boot again", timeout: .seconds(300), every: .seconds(1)) {
                let log = try await bed.console(vms[0])
                let writes = log.split(whereSeparator: \.isNewline).filter { $0.contains(Build.wroteMarker) }.count
                return (writes >= 2 ? true : nil, "\(writes) boots that wrote")
            }
            #expect(try await bed.domainState(vms[0]) == "running")
            #expect(try await bed.domainState(vms[1]) == "running")
            let show = try await bed.vcJSON(ClusterStatus.self, ["cluster", "show", name])
            #expect(show.cluster.state == .running)
            #expect(try await bed.vc(["cluster", "destroy", name]).status == 0)
            #expect(try await bed.leftovers(of: name, vms: 2, bridge: cluster.cluster.network.bridge) == [])
        }
    }

    /// A cluster without per-VM secrets (as one made before they existed) is never left
    /// with open disks, running or not: the reconciler removes its targets and says what
    /// to do. Suspended here, since a suspended cluster keeps its exports.
    @Test(.timeLimit(.minutes(10)))
    func aClusterWithoutDiskSecretsIsClosedNotLeftOpen() async throws {
        try await Testbed.with(hooks: "reconcileIntervalSeconds: 2") { bed in
            try await bed.importTiny()
            let name = "ns-\(bed.id)"
            let created = try await bed.vc([
                "cluster", "create", name, "--image", "tiny", "--vms", "1", "--memory", "128M",
            ])
            #expect(created.status == 0, "\(created)")
            #expect(try await bed.vc(["cluster", "suspend", name]).status == 0)
            #expect(try await bed.targets().count == 1)
            #expect(try await sh("etcdctl", ["del", "\(bed.prefix)/secrets/\(name)"]).status == 0)
            let closed = try await eventually("the cluster to be closed", timeout: .seconds(60)) {
                let c = try await bed.catalogCluster(name)
                return (c?.state == .failed ? c : nil, "\(c?.state.rawValue ?? "gone")")
            }
            #expect(closed.message?.contains("destroy it ('vc cluster destroy \(name)') and create it again") == true)
            #expect(try await bed.targets().isEmpty, "its disks are not exported any more")
            let shown = try await bed.vc(["cluster", "show", name])
            #expect(shown.stdout.contains("made before every disk had its own CHAP secret"), "\(shown)")
            #expect(try await bed.vc(["cluster", "resume", name]).status != 0)
            #expect(try await bed.vc(["cluster", "destroy", name]).status == 0)
            #expect(try await bed.leftovers(of: name, vms: 1, bridge: closed.network.bridge) == [])
        }
    }
}
