// VCModel: the pure heart of Peerless. Names, specs, catalog records, plans, and the
// documents handed to libvirt and dnsmasq. It performs no I/O and never reads a clock:
// time, capacity and observed state come in as parameters.

/// Derives every name a virtual cluster's resources carry from the cluster's own name and
/// a VM's index, so that the same inputs always give the same names. Recovery after a crash
/// relies on this: the catalog holds the cluster, and from it every resource can be found.
public enum Naming {
    /// The IQN prefix of everything Peerless exports or logs in with.
    public static let iqnPrefix = "iqn.2026-11.dev.peerless"

    /// A node's default name from its host name: the first label, lowercased, with
    /// anything but letters, digits and '-' made '-', and `node-` in front when it does not
    /// start with one (`Web-01.example.org` gives `web-01`, `7b` gives `node-7b`); letters
    /// and digits are ASCII ones, as in every name tgt and DNS take.
    public static func nodeName(host: String) -> String {
        let label = host.split(separator: ".").first.map(String.init) ?? "node"
        let ascii = { (c: Character) in c.isASCII && (c.isLetter || c.isNumber) }
        let cleaned = String(label.lowercased().map { ascii($0) || $0 == "-" ? $0 : "-" })
        return cleaned.first.map { $0.isASCII && $0.isLetter } == true ? cleaned : "node-" + cleaned
    }

    /// `demo` and index 1 give `demo-1`: the VM, its libvirt domain and its hostname.
    public static func vmName(cluster: String, index: Int) -> String { "\(cluster)-\(index)" }

    /// The iSCSI target that exports a VM's disk.
    public static func diskIQN(vm: String) -> String { "\(iqnPrefix):disk.\(vm)" }

    /// The iSCSI target used while an image is being written into the pool.
    public static func importIQN(image: String) -> String { "\(iqnPrefix):import.\(image)" }

    /// The initiator name a node logs in with when it is not a VM (image imports, checks).
    public static func initiatorIQN(node: String) -> String { "\(iqnPrefix):node.\(node)" }

    /// The initiator name of one incarnation of a VM: its node and placement generation are
    /// part of it, so a name is never used twice. libiscsi re-sends unacknowledged writes
    /// when a lost session gets back in, so a name that was once cut off must never be
    /// admitted again; a fresh name per incarnation makes that hold by construction.
    /// The initiator name of one incarnation; generation 0 (records from before
    /// generations) still logs in with its node's name.
    public static func incarnationIQN(node: String, vm: String, generation: Int) -> String {
        generation == 0 ? initiatorIQN(node: node) : initiatorIQN(node: node, vm: vm, generation: generation)
    }

    public static func initiatorIQN(node: String, vm: String, generation: Int) -> String {
        "\(iqnPrefix):node.\(node).vm.\(vm).g\(generation)"
    }

    /// The libvirt UUID of a VM's domain: the same on every node that defines it, so that a
    /// memory image saved on one node restores onto the definition made on another.
    /// Derived from the cluster's creation time too, so a cluster made again under the
    /// same name gets new ones.
    public static func domainUUID(cluster: String, vm: String, createdAt: Int64) -> String {
        let text = Array("peerless/\(cluster)/\(vm)/\(createdAt)".utf8)
        func fnv(_ seed: UInt64) -> UInt64 {
            var h = seed
            for b in text {
                h ^= UInt64(b)
                h = h &* 0x100_0000_01b3
            }
            return h
        }
        var hi = fnv(0xcbf2_9ce4_8422_2325)
        var lo = fnv(0x8422_2325_cbf2_9ce4)
        // RFC 9562 version 8 (custom), variant 10.
        hi = (hi & ~0xf000) | 0x8000
        lo = (lo & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000
        let h = String(hi, radix: 16).leftPadded(16)
        let l = String(lo, radix: 16).leftPadded(16)
        return "\(h.prefix(8))-\(h.dropFirst(8).prefix(4))-\(h.suffix(4))-\(l.prefix(4))-\(l.suffix(12))"
    }

    /// The VXLAN link that joins a cluster bridge to the same bridge on the other nodes.
    /// Outside the bridge's tap name space (`BRIDGEv…`), within Linux's 15 bytes.
    public static func overlay(bridge: String) -> String { "\(bridge)x" }

    /// Linux limits interface names to 15 bytes, so bridges are named by subnet index
    /// under a short prefix (`vcbr` unless configured).
    public static func bridge(subnet: Int, prefix: String = "vcbr") -> String { "\(prefix)\(subnet)" }

    /// The host side of a VM's network interface (its tap), fixed so that the tenant
    /// boundary's rules can name the port a VM's frames come in on. libvirt reserves
    /// `vnet…`; this stays within Linux's 15 bytes because bridge prefixes are at most 7
    /// characters (`AddressPlan`) and indexes at most 3 digits.
    public static func tap(bridge: String, index: Int) -> String { "\(bridge)v\(index)" }

    /// The CHAP user of a VM's disk target. Dots appear in neither VM nor image names, so
    /// the two kinds of account never meet.
    public static func chapUser(vm: String) -> String { "peerless.vm.\(vm)" }

    /// The CHAP user of an image's import target, made for one import.
    public static func chapUser(importing image: String) -> String { "peerless.import.\(image)" }

    /// The usage name of the libvirt secret holding a VM disk's CHAP password. Unique on a
    /// node because domain names are.
    public static func chapSecretUsage(vm: String) -> String { "peerless-disk-\(vm)" }

    /// Locally administered MACs under QEMU's prefix: unique per cluster network because
    /// the subnet index is unique in the catalog.
    public static func mac(subnet: Int, index: Int) -> String {
        "52:54:00:77:\(hex(subnet)):\(hex(index))"
    }

    /// The DNS domain of a cluster's private network.
    public static func domain(cluster: String) -> String { "\(cluster).vc" }

    private static func hex(_ v: Int) -> String {
        let s = String(v, radix: 16)
        return s.count == 1 ? "0" + s : s
    }
}

/// Validation of the names that end up in libvirt, tgt, DNS and file paths.
public enum NameRule {
    /// Longest cluster name: `NAME-NNN` must stay a DNS label (63) and leave room in IQNs.
    public static let maxClusterName = 40
    public static let maxImageName = 64

    /// A DNS label: lowercase letters, digits and hyphens, starting with a letter and not
    /// ending with a hyphen. Every consumer (libvirt names, IQNs, hostnames, file names)
    /// accepts exactly this set.
    public static func check(_ name: String, kind: String, maxLength: Int) throws(ModelError) {
        guard !name.isEmpty else { throw .invalidName(kind: kind, name: name, reason: "it is empty") }
        guard name.utf8.count <= maxLength else {
            throw .invalidName(kind: kind, name: name, reason: "it is longer than \(maxLength) characters")
        }
        let bytes = Array(name.utf8)
        guard let first = bytes.first, isLower(first) else {
            throw .invalidName(kind: kind, name: name, reason: "it must start with a lowercase letter")
        }
        for b in bytes where !(isLower(b) || isDigit(b) || b == UInt8(ascii: "-")) {
            let c = String(decoding: [b], as: UTF8.self)
            throw .invalidName(
                kind: kind, name: name,
                reason: "'\(c)' is not allowed; use lowercase letters, digits and '-'")
        }
        if bytes.last == UInt8(ascii: "-") {
            throw .invalidName(kind: kind, name: name, reason: "it must not end with '-'")
        }
    }

    public static func checkCluster(_ name: String) throws(ModelError) {
        try check(name, kind: "cluster", maxLength: maxClusterName)
    }

    public static func checkImage(_ name: String) throws(ModelError) {
        try check(name, kind: "image", maxLength: maxImageName)
    }

    /// Node names come from hostnames: lowercase them, but still refuse what tgt or DNS
    /// would reject.
    public static func checkNode(_ name: String) throws(ModelError) {
        try check(name, kind: "node", maxLength: 63)
    }

    private static func isLower(_ b: UInt8) -> Bool { b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z") }
    private static func isDigit(_ b: UInt8) -> Bool { b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }
}

extension String {
    fileprivate func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
