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
        guard let group = getgrnam("kvm") else {
            return "\(path) exists but there is no group kvm for libvirt's QEMU user; run scripts/setup.sh"
        }
        let gid = group.pointee.gr_gid
        guard info.st_gid == gid, info.st_mode & 0o060 == 0o060 else {
            let owner = getgrgid(info.st_gid).map { String(cString: $0.pointee.gr_name) } ?? "\(info.st_gid)"
            let mode = String(info.st_mode & 0o777, radix: 8)
            return
                "\(path) has group \(owner) and mode \(mode), not kvm and 660: libvirtd re-probes QEMU on every call "
                + "and VM starts take seconds; run 'chgrp kvm \(path); chmod 660 \(path)' (scripts/setup.sh does)"
        }
        return nil
    }
}
