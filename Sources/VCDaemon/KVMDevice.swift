import Glibc

/// libvirtd checks on every call whether its QEMU user may open /dev/kvm. Without udev
/// (containers, this kind of test machine) the device can carry a foreign group; libvirtd
/// then believes KVM "vanished" and re-probes QEMU's capabilities for seconds on every
/// call, so each define or start takes seconds to minutes. Debian's udev rule gives it
/// group kvm, mode 0660; anything else is reported, with the fix.
enum KVMDevice {
    static let path = "/dev/kvm"

    /// Why libvirt's QEMU would be denied /dev/kvm, or nil when the device is absent or fine.
    static func problem() -> String? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        guard let gid = groupEntry(named: "kvm")?.gid else {
            return "\(path) exists but there is no group kvm for libvirt's QEMU user; run scripts/setup.sh"
        }
        guard info.st_gid == gid, info.st_mode & 0o060 == 0o060 else {
            let owner = groupEntry(id: info.st_gid)?.name ?? "\(info.st_gid)"
            let mode = String(info.st_mode & 0o777, radix: 8)
            return
                "\(path) has group \(owner) and mode \(mode), not kvm and 660: libvirtd re-probes QEMU on every call "
                + "and VM starts take seconds; run 'chgrp kvm \(path); chmod 660 \(path)' (scripts/setup.sh does)"
        }
        return nil
    }

    // getgrnam/getgrgid return a static buffer, and API requests run concurrently: the
    // reentrant forms with a buffer of the caller's.
    private static func groupEntry(named name: String) -> (name: String, gid: gid_t)? {
        lookup { getgrnam_r(name, &$0, $1, $2, &$3) }
    }

    private static func groupEntry(id: gid_t) -> (name: String, gid: gid_t)? {
        lookup { getgrgid_r(id, &$0, $1, $2, &$3) }
    }

    private static func lookup(
        _ call: (inout Glibc.group, UnsafeMutablePointer<CChar>, Int, inout UnsafeMutablePointer<Glibc.group>?) -> Int32
    ) -> (name: String, gid: gid_t)? {
        var entry = Glibc.group()
        var found: UnsafeMutablePointer<Glibc.group>?
        var buffer = [CChar](repeating: 0, count: 16384)
        let rc = buffer.withUnsafeMutableBufferPointer { call(&entry, $0.baseAddress!, $0.count, &found) }
        guard rc == 0, found != nil else { return nil }
        return (String(cString: entry.gr_name), entry.gr_gid)
    }
}
