import Foundation
import Testing
import VCModel

/// Failures midway and crashes: nothing is ever left half-made.
@Suite(.serialized) struct RollbackAndRecoveryTests {
    /// vcd names the bridge when it plans a cluster: "… (BRIDGE)".
    func plannedBridge(_ output: String, prefix: String) -> String? {
        guard let open = output.range(of: "(\(prefix)") else { return nil }
        let rest = output[open.upperBound...]
        guard let close = rest.firstIndex(of: ")") else { return nil }
        return prefix + rest[..<close]
    }

    @Test(.timeLimit(.minutes(10)))
    func createFailingAfterTheSecondVMUndoesEverythingItMade() async throws {
        try await Testbed.with(hooks: "testing:\n  failCreateAfterVMs: 2") { bed in
            try await bed.importTiny()
            let name = "rb-\(bed.id)"
            let r = try await bed.vc(["cluster", "create", name, "--image", "tiny", "--vms", "3", "--memory", "128M"])
            #expect(r.status == 1, "\(r)")
            let lastLine = r.stderr.split(whereSeparator: \.isNewline).last.map(String.init) ?? ""
            #expect(lastLine.hasPrefix("vc: injected failure after 2 VMs"), "\(r)")
            #expect(lastLine.hasSuffix("(rolled back)"))
            // Two VMs were complete (defined and started) before the failure: all undone.
            #expect(r.stderr.contains("undo define \(name)-1"))
            let bridge = try #require(plannedBridge(r.stderr, prefix: bed.bridgePrefix))
            #expect(try await bed.leftovers(of: name, vms: 3, bridge: bridge) == [])
            #expect(try await bed.vcJSON([ClusterSummary].self, ["cluster", "list"]).isEmpty)
            #expect(try await bed.etcdKeys().filter { $0.contains("/subnets/") || $0.contains("/ops/") }.isEmpty)
        }
    }

    /// SIGKILL is a crash; SIGTERM a graceful stop (systemd's), which must leave the
    /// operation journaled, not recorded as failed with host state left behind.
    @Test(.timeLimit(.minutes(10)), arguments: [SIGKILL, SIGTERM])
    func vcdKilledDuringCreateUndoesItWhenItStartsAgain(signal: Int32) async throws {
        try await Testbed.with(hooks: "testing:\n  stepDelayMilliseconds: 300") { bed in
            try await bed.importTiny()
            let name = "kc-\(bed.id)"
            let vc = bed.vcInvocation(["cluster", "create", name, "--image", "tiny", "--vms", "3", "--memory", "128M"])
            let client = Task { try await sh(vc.program, vc.arguments) }
            _ = try await eventually("the first domain of \(name)", timeout: .seconds(60), every: .milliseconds(100)) {
                let names = try await bed.domainNames()
                return (names.contains("\(name)-1") ? true : nil, "\(names)")
            }
            bed.stopVCD(signal: signal)
            let interrupted = try await client.value
            #expect(interrupted.status != 0)
            if signal == SIGTERM {
                #expect(interrupted.stderr.contains("vcd is stopping"), "\(interrupted)")
            }
            let journal = try await bed.etcdKeys()
            #expect(journal.contains { $0.hasSuffix("/ops/\(name)") }, "the journal outlives the crash: \(journal)")
            let cluster = try #require(try await bed.catalogCluster(name))
            #expect(cluster.state == .creating)
            #expect(try await bed.domainNames().contains("\(name)-1"), "the crash left a half-made cluster to recover")

            try await bed.startVCD()
            _ = try await eventually("the interrupted create to be undone", timeout: .seconds(120)) {
                let left = try await bed.leftovers(of: name, vms: 3, bridge: cluster.network.bridge)
                return (left.isEmpty ? true : nil, "\(left)")
            }
            #expect(try await bed.vcJSON([ClusterSummary].self, ["cluster", "list"]).isEmpty)
        }
    }

    @Test(.timeLimit(.minutes(10)), arguments: [SIGKILL, SIGTERM])
    func vcdKilledDuringDestroyFinishesItWhenItStartsAgain(signal: Int32) async throws {
        try await Testbed.with(hooks: "testing:\n  stepDelayMilliseconds: 300") { bed in
            try await bed.importTiny()
            let name = "kd-\(bed.id)"
            let created = try await bed.vc([
                "cluster", "create", name, "--image", "tiny", "--vms", "2", "--memory", "128M",
            ])
            #expect(created.status == 0, "\(created)")
            let cluster = try #require(try await bed.catalogCluster(name))

            let vc = bed.vcInvocation(["cluster", "destroy", name])
            let client = Task { try await sh(vc.program, vc.arguments) }
            _ = try await eventually("the destroy to start", timeout: .seconds(30), every: .milliseconds(100)) {
                let c = try await bed.catalogCluster(name)
                return (c?.state == .destroying ? true : nil, "\(c?.state.rawValue ?? "gone")")
            }
            // Another operation on the same cluster is refused meanwhile.
            let busy = try await bed.vc(["cluster", "suspend", name])
            #expect(busy.status == 4, "\(busy)")
            #expect(busy.stderr.contains("is busy"), "\(busy)")
            // Midway: the first domain is gone (undefine is a VM's second undo step), the
            // network, undone last, is not.
            _ = try await eventually(
                "the first domain to be undefined", timeout: .seconds(30), every: .milliseconds(50)
            ) {
                let names = try await bed.domainNames()
                return (!names.contains("\(name)-1") ? true : nil, "\(names)")
            }
            bed.stopVCD(signal: signal)
            let interrupted = try await client.value
            if signal == SIGTERM {
                #expect(interrupted.stderr.contains("vcd is stopping"), "\(interrupted)")
            }
            // Killed midway: the network goes last, so it is still there.
            #expect(try await bed.bridgeExists(cluster.network.bridge))
            #expect(try await bed.catalogCluster(name)?.state == .destroying)

            try await bed.startVCD()
            _ = try await eventually("the interrupted destroy to finish", timeout: .seconds(120)) {
                let left = try await bed.leftovers(of: name, vms: 2, bridge: cluster.network.bridge)
                return (left.isEmpty ? true : nil, "\(left)")
            }
            #expect(try await bed.vcJSON([ClusterSummary].self, ["cluster", "list"]).isEmpty)
        }
    }
    @Test(.timeLimit(.minutes(10)))
    func vcdKilledDuringSuspendKeepsEveryMemoryImageAndResumes() async throws {
        try await Testbed.with(hooks: "testing:\n  stepDelayMilliseconds: 300") { bed in
            try await bed.importTiny()
            let name = "ks-\(bed.id)"
            let created = try await bed.vc([
                "cluster", "create", name, "--image", "tiny", "--vms", "2", "--memory", "128M",
            ])
            #expect(created.status == 0, "\(created)")
            _ = try await bed.waitForConsoles(["\(name)-1", "\(name)-2"], marker: Build.wroteMarker)

            let vc = bed.vcInvocation(["cluster", "suspend", name])
            let client = Task { try await sh(vc.program, vc.arguments) }
            let saves = "\(bed.poolPath)/saves/\(name)"
            _ = try await eventually("a memory image being written", timeout: .seconds(60), every: .milliseconds(50)) {
                let files = (try? FileManager.default.contentsOfDirectory(atPath: saves)) ?? []
                return (files.isEmpty ? nil : true, "\(files)")
            }
            bed.stopVCD(signal: SIGKILL)
            _ = try await client.value
            #expect(try await bed.catalogCluster(name)?.state == .suspending)

            // The restarted vcd finishes the suspend: every VM's memory is kept.
            try await bed.startVCD()
            _ = try await eventually("the interrupted suspend to finish", timeout: .seconds(120)) {
                let c = try await bed.catalogCluster(name)
                return (c?.state == .suspended ? true : nil, "\(c?.state.rawValue ?? "gone")")
            }
            for vm in ["\(name)-1", "\(name)-2"] {
                #expect(FileManager.default.fileExists(atPath: "\(saves)/\(vm).save"), "memory image of \(vm)")
                #expect(try await bed.domainState(vm) == "shut off")
            }
            let resumed = try await bed.vc(["cluster", "resume", name])
            #expect(resumed.status == 0, "\(resumed)")
            let files = (try? FileManager.default.contentsOfDirectory(atPath: saves)) ?? []
            #expect(files.isEmpty, "restore consumed every image: \(files)")
            #expect(try await bed.vc(["cluster", "destroy", name]).status == 0)
        }
    }
}

/// Bad input and missing daemons: one line that says what is wrong and what to do, a
/// distinct exit code, and nothing left behind.
@Suite(.serialized) struct BadInputTests {
    @Test(.timeLimit(.minutes(10)))
    func badRequestsGetOneLineErrorsAndLeaveNothing() async throws {
        try await Testbed.with { bed in
            try await bed.importTiny()
            let junk = "\(bed.root)/notes.txt"
            try "this is not a disk\n".write(toFile: junk, atomically: true, encoding: .utf8)
            // A qcow2 whose backing file would make vcd read a host file of the user's choice.
            let overlay = "\(bed.root)/overlay.qcow2"
            let made = try await sh("qemu-img", ["create", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", overlay])
            #expect(made.status == 0, "\(made)")
            let cases: [([String], Int32, String)] = [
                (
                    ["cluster", "create", "x1", "--image", "nope", "--vms", "1"], 3,
                    "no image named 'nope'; known images: tiny"
                ),
                (["cluster", "create", "x2", "--image", "tiny", "--vms", "0"], 2, "must be between 1 and 200, not 0"),
                (["cluster", "create", "x3", "--image", "tiny", "--vms=-2"], 2, "not -2"),
                (["cluster", "create", "x4", "--image", "tiny", "--vms", "100000"], 2, "not 100000"),
                (
                    ["cluster", "create", "x5", "--image", "tiny", "--vms", "1", "--memory", "0"], 2,
                    "invalid memory '0'"
                ),
                (
                    ["cluster", "create", "x6", "--image", "tiny", "--vms", "1", "--memory", "lots"], 2,
                    "invalid memory 'lots'"
                ),
                (
                    ["cluster", "create", "x7", "--image", "tiny", "--vms", "4", "--memory", "512G"], 2,
                    "does not fit"
                ),
                (["cluster", "create", "x8", "--image", "tiny", "--vms", "1", "--vcpus", "4096"], 2, "vCPUs"),
                (
                    ["cluster", "create", "Bad_Name", "--image", "tiny", "--vms", "1"], 2,
                    "invalid cluster name 'Bad_Name'"
                ),
                (["cluster", "create", "a.b", "--image", "tiny", "--vms", "1"], 2, "'.' is not allowed"),
                (["image", "import", "junk", junk], 2, "is not a disk image"),
                (["image", "import", "Bad.Name", Build.tinyImage], 2, "invalid image name"),
                (["image", "import", "tiny", Build.tinyImage], 4, "image 'tiny' already exists"),
                (["image", "import", "gone", "\(bed.root)/missing.img"], 2, "cannot read"),
                (["image", "import", "overlay", overlay], 2, "has a backing file"),
                (["cluster", "show", "ghost"], 3, "no cluster named 'ghost'"),
                (["cluster", "suspend", "ghost"], 3, "no cluster named 'ghost'"),
                (["vm", "console", "ghost-1"], 3, "no VM named 'ghost-1'"),
            ]
            for (args, code, text) in cases {
                let r = try await bed.vc(args)
                let lines = r.stderr.split(whereSeparator: \.isNewline)
                #expect(r.status == code, "vc \(args.joined(separator: " ")): \(r)")
                #expect(
                    lines.count == 1 && lines[0].hasPrefix("vc: ") && r.stderr.contains(text),
                    "vc \(args.joined(separator: " ")): \(r)")
            }

            // A duplicate name is refused and the existing cluster is untouched.
            let name = "dup-\(bed.id)"
            #expect(
                try await bed.vc(["cluster", "create", name, "--image", "tiny", "--vms", "1", "--memory", "128M"])
                    .status == 0)
            let again = try await bed.vc([
                "cluster", "create", name, "--image", "tiny", "--vms", "1", "--memory", "128M",
            ])
            #expect(again.status == 4, "\(again)")
            #expect(again.stderr == "vc: cluster '\(name)' already exists\n")
            #expect(
                try await bed.vcJSON(ClusterStatus.self, ["cluster", "show", name]).vms.map(\.domain) == ["running"])
            #expect(try await bed.vc(["cluster", "destroy", name]).status == 0)

            // Nothing left by any of them.
            #expect(try await bed.vcJSON([ClusterSummary].self, ["cluster", "list"]).isEmpty)
            #expect(try await bed.vcJSON([GoldenImage].self, ["image", "list"]).map(\.name) == ["tiny"])
            #expect(try await bed.targets().isEmpty)
            let ours = try await bed.domainNames().filter { $0.hasPrefix("x") || $0.hasPrefix("dup-\(bed.id)") }
            #expect(ours.isEmpty)
            // Node records (live and known) and the per-node commitment guards stay; nothing else.
            let kept = ["/images/", "/nodes/", "/members/", "/commitments/"]
            #expect(try await bed.etcdKeys().filter { key in !kept.contains { key.contains($0) } }.isEmpty)
            #expect(FileManager.default.fileExists(atPath: "\(bed.poolPath)/images/junk.raw") == false)

            // Bodies vc would never send, straight to the API: the status says whose fault
            // it is and the message is one line naming the limit or the field.
            let big = "\(bed.root)/big.json"
            try ("{\"name\":\"" + String(repeating: "a", count: (1 << 20) + 1024) + "\"}").write(
                toFile: big, atomically: true, encoding: .utf8)
            let bodies: [(String, Int, String)] = [
                ("@\(big)", 413, "the request body is larger than 1 MiB"),
                (
                    #"{"name":"x9","image":"tiny","vms":"three","vcpus":1,"memoryMiB":128,"sshKeys":[]}"#, 400,
                    "field 'vms': expected a number"
                ),
                (#"{"name":"x9","vms":1,"vcpus":1,"memoryMiB":128,"sshKeys":[]}"#, 400, "missing field 'image'"),
                (#"{"name": "x9", "vms": 1,"#, 400, "not JSON"),
            ]
            for (data, status, text) in bodies {
                let r = try await sh(
                    "curl",
                    [
                        "-sS", "--unix-socket", bed.socket, "http://localhost/v1/clusters", "-H",
                        "Content-Type: application/json", "-d", data, "-w", "\n%{http_code}",
                    ])
                let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false)
                let answer = try? JSONDecoder().decode(APIError.self, from: Data((lines.first ?? "").utf8))
                #expect(lines.last == "\(status)"[...], "\(data.prefix(80)): \(r)")
                #expect(lines.count == 2 && answer?.message.contains(text) == true, "\(data.prefix(80)): \(r)")
                #expect(answer?.message.contains("\n") == false, "\(data.prefix(80)): \(r)")
            }

            // Manifests: where the YAML breaks, or which field is wrong, in one line.
            let broken = "\(bed.root)/broken.yaml"
            try "name: y1\nimage: tiny\n  vms: 3\n".write(toFile: broken, atomically: true, encoding: .utf8)
            let mistyped = "\(bed.root)/mistyped.yaml"
            try "name: y2\nimage: tiny\nvms: three\n".write(toFile: mistyped, atomically: true, encoding: .utf8)
            for (file, text) in [
                (broken, "\(broken):3:6: "), (mistyped, "\(mistyped): field 'vms': expected a number"),
            ] {
                let r = try await bed.vc(["apply", "-f", file])
                let lines = r.stderr.split(whereSeparator: \.isNewline)
                #expect(r.status == 2, "\(r)")
                #expect(lines.count == 1 && lines[0].hasPrefix("vc: \(text)"), "\(r)")
            }
            #expect(try await bed.vcJSON([ClusterSummary].self, ["cluster", "list"]).isEmpty)
        }
    }

    /// Loopback TCP is open to every local user: only a client holding the token that vcd
    /// keeps readable by root alone may drive it. The Unix socket is closed by its mode.
    @Test(.timeLimit(.minutes(5)))
    func tcpAPIWantsTheTokenOnlyRootCanRead() async throws {
        try await Testbed.with { bed in
            let tokenFile = "\(bed.statePath)/api-token"
            let attributes = try FileManager.default.attributesOfItem(atPath: tokenFile)
            #expect((attributes[.posixPermissions] as? Int) == 0o600)
            let socketMode = try FileManager.default.attributesOfItem(atPath: bed.socket)[.posixPermissions] as? Int
            #expect(socketMode == 0o660)

            // No token: 401 with a challenge and a body that says where the token is.
            let url = "http://127.0.0.1:\(bed.apiPort)/v1/clusters"
            let bare = try await sh("curl", ["-sS", "-i", url])
            #expect(bare.stdout.hasPrefix("HTTP/1.1 401"), "\(bare)")
            #expect(bare.stdout.lowercased().contains("www-authenticate: bearer"), "\(bare)")
            let body = bare.stdout.components(separatedBy: "\r\n\r\n").last ?? ""
            let refusal = try JSONDecoder().decode(APIError.self, from: Data(body.utf8))
            #expect(refusal.code == "unauthorized")
            #expect(refusal.message.contains("needs the API token; run vc as root (it reads \(tokenFile))"), "\(bare)")

            let tcp = ["--endpoint", "http://127.0.0.1:\(bed.apiPort)"]
            let wrong = "\(bed.root)/wrong-token"
            try String(repeating: "0", count: 64).write(toFile: wrong, atomically: true, encoding: .utf8)
            let refusals = [
                ("\(bed.root)/no-such-file", "vc: cannot read the API token file \(bed.root)/no-such-file"),
                (wrong, "vc: vcd's TCP API refused the API token sent"),
            ]
            for (file, text) in refusals {
                let r = try await sh("\(Build.binDirectory)/vc", ["cluster", "list"] + tcp + ["--token-file", file])
                #expect(r.status == 7, "\(r)")
                #expect(r.stderr.hasPrefix(text), "\(r)")
                #expect(r.stderr.split(whereSeparator: \.isNewline).count == 1, "\(r)")
            }
            let good = try await sh(
                "\(Build.binDirectory)/vc",
                ["cluster", "list", "--output", "json"] + tcp + ["--token-file", tokenFile])
            #expect(good.status == 0, "\(good)")
            #expect(good.stdout.filter { !$0.isWhitespace } == "[]", "\(good)")
            // A vcd restart keeps the token: clients holding it go on working.
            let token = try String(contentsOfFile: tokenFile, encoding: .utf8)
            bed.stopVCD()
            try await bed.startVCD()
            #expect(try String(contentsOfFile: tokenFile, encoding: .utf8) == token)

            // A token file others can read is refused, not used.
            bed.stopVCD()
            chmod(tokenFile, 0o644)
            let loose = try await bed.runVCDExpectingFailure { $0 }
            #expect(loose.stderr.contains("must be a regular file of vcd's user with mode 0600"), "\(loose)")
            chmod(tokenFile, 0o600)
            try await bed.startVCD()
        }
    }

    /// A /dev/kvm that libvirt's QEMU user cannot open makes every VM start take seconds
    /// (libvirtd re-probes QEMU on each call); the technician's view names it and the fix.
    @Test(.timeLimit(.minutes(5)))
    func foreignKVMDeviceGroupIsReportedWithTheFix() async throws {
        var device = stat()
        // Both are there on every machine of this kind (the KVM device even where nested KVM
        // hangs; the group from the QEMU packages `make test` installs).
        try #require(stat("/dev/kvm", &device) == 0, "no /dev/kvm on this machine")
        let kvm = try #require(getgrnam("kvm"), "no kvm group: scripts/setup.sh installs qemu-system-x86")
        let kvmGID = kvm.pointee.gr_gid
        try await Testbed.with { bed in
            #expect(try await bed.vcnodeStatus().daemons.allSatisfy(\.healthy))
            // Put back at once, whatever happens: the device is the host's.
            chown("/dev/kvm", uid_t.max, 0)
            defer {
                chown("/dev/kvm", uid_t.max, kvmGID)
                chmod("/dev/kvm", 0o660)
            }
            let r = try await sh(
                "\(Build.binDirectory)/vcnode", ["status", "--endpoint", "unix://\(bed.socket)"])
            #expect(r.status == 5, "\(r)")
            #expect(r.stdout.contains("/dev/kvm has group root and mode 660, not kvm and 660"), "\(r)")
            #expect(r.stdout.contains("chgrp kvm /dev/kvm"), "\(r)")
        }
        #expect(stat("/dev/kvm", &device) == 0 && device.st_gid == kvmGID)
    }

    /// Two creates that each fit, but not together, arrive at once: exactly one is refused.
    /// The hook holds each admission open for half a second, so that without the gate
    /// both would check the free memory before either committed it.
    @Test(.timeLimit(.minutes(10)))
    func twoCreatesAtOnceCannotOvercommitTheNode() async throws {
        try await Testbed.with(hooks: "testing:\n  admissionDelayMilliseconds: 500") { bed in
            try await bed.importTiny()
            let status = try await bed.vcnodeStatus()
            let capacity = status.record.capacity
            let free = capacity.memoryMiB - capacity.reservedMiB - (try #require(status.committedMemoryMiB))
            // Just over half each; QEMU allocates guest memory lazily, the tiny guest uses little.
            let each = free / 2 + 64
            let names = ["oa-\(bed.id)", "ob-\(bed.id)"]
            let results = try await withThrowingTaskGroup(of: (String, CommandResult).self) { group in
                for name in names {
                    let vc = bed.vcInvocation([
                        "cluster", "create", name, "--image", "tiny", "--vms", "1", "--memory", "\(each)M",
                    ])
                    group.addTask { (name, try await sh(vc.program, vc.arguments)) }
                }
                return try await group.reduce(into: [String: CommandResult]()) { $0[$1.0] = $1.1 }
            }
            let made = names.filter { results[$0]?.status == 0 }
            let refused = names.filter { results[$0]?.status == 2 }
            #expect(made.count == 1 && refused.count == 1, "\(results)")
            for name in refused {
                #expect(results[name]?.stderr.contains("does not fit") == true, "\(results)")
                #expect(try await bed.leftovers(of: name, vms: 1, bridge: nil) == [])
            }
            for name in made {
                #expect(try await bed.vc(["cluster", "destroy", name]).status == 0)
            }
            #expect(try await bed.vcJSON([ClusterSummary].self, ["cluster", "list"]).isEmpty)
        }
    }

    @Test(.timeLimit(.minutes(5)))
    func createWithTgtdDownFailsInOneLineAndMakesNothing() async throws {
        try await Testbed.with { bed in
            try await bed.importTiny()
            try await bed.stopTGTD()
            let name = "nt-\(bed.id)"
            let r = try await bed.vc(["cluster", "create", name, "--image", "tiny", "--vms", "2", "--memory", "128M"])
            #expect(r.status == 5, "\(r)")
            #expect(r.stderr.hasPrefix("vc: the iSCSI target daemon (tgtd) is not available"), "\(r)")
            #expect(r.stderr.split(whereSeparator: \.isNewline).count == 1)
            #expect(try await bed.leftovers(of: name, vms: 2, bridge: nil) == [])
            #expect(try await bed.vcJSON([ClusterSummary].self, ["cluster", "list"]).isEmpty)
            let status = try await bed.vcnodeStatus()
            #expect(status.daemons.first { $0.name == "tgtd" }?.healthy == false)
        }
    }

    @Test(.timeLimit(.minutes(5)))
    func vcdRefusesToStartWithoutEtcdLibvirtdOrTgtdAndSaysWhich() async throws {
        let bed = Testbed()
        defer { try? FileManager.default.removeItem(atPath: bed.root) }
        let noEtcd = try await bed.runVCDExpectingFailure {
            $0.replacingOccurrences(of: "http://127.0.0.1:2379", with: "http://127.0.0.1:1")
        }
        #expect(noEtcd.status == 1)
        #expect(noEtcd.stderr.contains("vcd: the catalog (etcd at http://127.0.0.1:1) is not reachable"), "\(noEtcd)")
        let noLibvirt = try await bed.runVCDExpectingFailure {
            $0.replacingOccurrences(of: "qemu:///system", with: "qemu:///system?socket=/nonexistent/libvirt-sock")
        }
        #expect(noLibvirt.status == 1)
        #expect(noLibvirt.stderr.contains("vcd: libvirtd is not answering"), "\(noLibvirt)")
        // No tgtd listens on this testbed's control port: it was never started.
        let noTgtd = try await bed.runVCDExpectingFailure { $0 }
        #expect(noTgtd.status == 1)
        #expect(noTgtd.stderr.contains("vcd: the iSCSI target daemon (tgtd) is not available"), "\(noTgtd)")
        let noVCD = try await bed.vc(["cluster", "list"])
        #expect(noVCD.status == 6)
        #expect(noVCD.stderr.hasPrefix("vc: no vcd answers at unix://\(bed.socket)"), "\(noVCD)")
    }
}
