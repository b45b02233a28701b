/// The CHAP passwords of a cluster's VM disks: one per VM, made at create. They live in a
/// catalog key of their own (`secrets/CLUSTER`), never in the cluster record, so no
/// listing, `show` or operation event can carry them, and on the node that runs the VM in
/// a private libvirt secret (root-only file), from which QEMU reads it; they are never
/// given to a program on its command line.
public struct ClusterSecrets: Codable, Sendable, Equatable {
    /// VM name → the CHAP password of its disk target (user `Naming.chapUser(vm:)`).
    public var disks: [String: String]

    public init(disks: [String: String]) { self.disks = disks }

    /// 24 characters of 62: about 143 bits, within what every CHAP implementation accepts.
    public static let passwordLength = 24
    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789".utf8)

    /// A fresh secret per VM. The generator is a parameter so that tests are deterministic;
    /// vcd passes `SystemRandomNumberGenerator` (the kernel's getrandom).
    public static func make(for vms: [VirtualMachine], using generator: inout some RandomNumberGenerator)
        -> ClusterSecrets
    {
        var disks: [String: String] = [:]
        for vm in vms { disks[vm.name] = password(using: &generator) }
        return ClusterSecrets(disks: disks)
    }

    /// One fresh CHAP password.
    public static func password(using generator: inout some RandomNumberGenerator) -> String {
        String(decoding: (0..<passwordLength).map { _ in alphabet.randomElement(using: &generator)! }, as: UTF8.self)
    }
}
