import Foundation
import Logging
import VCHost
import VCModel

/// Decides between KVM and TCG by proof, not by the presence of /dev/kvm: nested KVM can
/// open /dev/kvm and still hang a guest at boot. The probe boots a tiny kernel under KVM
/// and waits for its marker on the serial console. The verdict is cached per host kernel
/// and QEMU binary, so it is paid once.
struct AcceleratorProbe {
    let configuration: DaemonConfiguration.AcceleratorConfiguration
    let cacheFile: String
    let logger: Logger

    static let marker = "PEERLESS-PROBE-OK"

    func decide() async -> Accelerator {
        switch configuration.mode {
        case "kvm": return Accelerator(kind: .kvm, reason: "forced by configuration")
        case "tcg": return Accelerator(kind: .tcg, reason: "forced by configuration")
        default: break
        }
        guard access("/dev/kvm", R_OK | W_OK) == 0 else { return Accelerator(kind: .tcg, reason: "no usable /dev/kvm") }
        guard access(configuration.probeKernel, R_OK) == 0, access(configuration.probeInitrd, R_OK) == 0 else {
            return Accelerator(
                kind: .tcg, reason: "no probe kernel at \(configuration.probeKernel) (make images installs it)")
        }
        let key = cacheKey()
        if let cached = readCache(), cached.key == key { return cached.accelerator }
        let verdict = await probe()
        writeCache(key: key, verdict)
        return verdict
    }

    private func probe() async -> Accelerator {
        let args = [
            "-accel", "kvm", "-cpu", "host", "-machine", "pc", "-m", "128", "-nodefaults", "-nographic", "-no-reboot",
            "-serial", "stdio", "-kernel", configuration.probeKernel, "-initrd", configuration.probeInitrd,
            "-append", "console=ttyS0 quiet peerless.probe panic=-1",
        ]
        let limit = configuration.probeTimeoutSeconds
        do {
            let out = try await HostCommand.run("qemu-system-x86_64", args, timeout: .seconds(limit), logger: logger)
            if out.stdout.contains(Self.marker) { return Accelerator(kind: .kvm, reason: "KVM probe booted a guest") }
            return Accelerator(kind: .tcg, reason: "KVM probe guest did not print its marker")
        } catch {
            if error.status == nil {
                return Accelerator(kind: .tcg, reason: "KVM probe did not finish in \(limit) s (nested KVM?)")
            }
            return Accelerator(kind: .tcg, reason: "KVM probe failed: \(error.reason)")
        }
    }

    private struct Cache: Codable {
        var key: String
        var accelerator: Accelerator
    }

    private func cacheKey() -> String {
        var u = utsname()
        uname(&u)
        let release = withUnsafeBytes(of: u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        func mtime(_ path: String) -> String {
            var st = stat()
            return stat(path, &st) == 0 ? "\(st.st_mtim.tv_sec)" : "-"
        }
        return [release, mtime("/usr/bin/qemu-system-x86_64"), mtime(configuration.probeKernel)].joined(separator: "/")
    }

    private func readCache() -> Cache? {
        guard let data = FileManager.default.contents(atPath: cacheFile) else { return nil }
        return try? JSONDecoder().decode(Cache.self, from: data)
    }

    private func writeCache(key: String, _ accelerator: Accelerator) {
        guard let data = try? JSONEncoder().encode(Cache(key: key, accelerator: accelerator)) else { return }
        _ = FileManager.default.createFile(atPath: cacheFile, contents: data)
    }
}
