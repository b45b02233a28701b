import Foundation
import Testing
import VCModel

/// The real guest image: a VM made from `images/debian` names itself after the VM and
/// lets in the SSH key given at create, and nothing else.
@Suite(.serialized) struct DebianImageTests {
    static let readyMarker = "PEERLESS-DEBIAN-READY"

    @Test(.timeLimit(.minutes(15)))
    func debianGuestTakesItsHostnameAndSSHKeyFromTheCluster() async throws {
        try await Testbed.with { bed in
            let key = "\(bed.root)/id_ed25519"
            let made = try await sh("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", key])
            #expect(made.status == 0, "\(made)")
            let imported = try await bed.vc(["image", "import", "debian", Build.debianImage])
            #expect(imported.status == 0, "\(imported)")
            let name = "dn-\(bed.id)"
            let created = try await bed.vc([
                "cluster", "create", name, "--image", "debian", "--vms", "1", "--memory", "1G",
                "--ssh-key", "\(key).pub",
            ])
            #expect(created.status == 0, "\(created)")
            let vm = "\(name)-1"
            let ready = try await bed.waitForConsoles([vm], marker: Self.readyMarker, timeout: .seconds(600))
            #expect(ready[vm]?.contains("\(Self.readyMarker) host=\(vm)") == true, "\(ready)")

            let ip = try #require(try await bed.vcJSON(ClusterStatus.self, ["cluster", "show", name]).vms.first?.ip)
            let options = [
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR",
            ]
            // sshd comes up after the marker: wait for it, with the key given at create.
            let login = try await eventually("an SSH login with the key", timeout: .seconds(180), every: .seconds(2)) {
                let r = try await sh("ssh", options + ["-i", key, "root@\(ip)", "hostname"])
                return (r.status == 0 ? r.stdout.trimmingCharacters(in: .whitespacesAndNewlines) : nil, "\(r)")
            }
            #expect(login == vm)
            // Without the key: refused, the image has no password and no other key.
            let other = "\(bed.root)/other"
            _ = try await sh("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", other])
            let refused = try await sh(
                "ssh", options + ["-i", other, "-o", "IdentitiesOnly=yes", "root@\(ip)", "true"])
            #expect(refused.status != 0)
            #expect(refused.stderr.contains("Permission denied"), "\(refused)")

            #expect(try await bed.vc(["cluster", "destroy", name]).status == 0)
            #expect(try await bed.vc(["image", "delete", "debian"]).status == 0)
        }
    }
}
