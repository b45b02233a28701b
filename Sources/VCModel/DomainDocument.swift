/// Where a VM's disk is served: a tgt portal and the target's name.
public struct ISCSIPortal: Sendable, Equatable {
    public var host: String
    public var port: Int

    public init(host: String, port: Int = 3260) {
        self.host = host
        self.port = port
    }
}

/// CHAP credentials for a VM's disk: the libvirt secret's usage name and the user.
public struct CHAPReference: Sendable, Equatable {
    public var user: String
    public var secretUsage: String

    public init(user: String, secretUsage: String) {
        self.user = user
        self.secretUsage = secretUsage
    }
}

/// The libvirt domain XML of a VM. Pure: every input is a parameter.
public struct DomainDocument: Sendable, Equatable {
    public static let metadataNamespace = "https://peerless.dev/xmlns/domain/1"

    public var vm: VirtualMachine
    public var cluster: String
    public var vcpus: Int
    public var memoryMiB: Int
    public var bridge: String
    public var portal: ISCSIPortal
    public var initiator: String
    public var accelerator: Accelerator.Kind
    public var consolePath: String
    public var chap: CHAPReference?
    public var sshKeys: [String]
    /// The other VMs' hostnames, for the guest to reach by name (`peerless.peers=a,b,c`).
    public var peers: [String]
    /// More SMBIOS OEM strings, after Peerless's own (a testing hook of vcd).
    public var extraOEM: [String]

    public init(
        vm: VirtualMachine, cluster: String, vcpus: Int, memoryMiB: Int, bridge: String, portal: ISCSIPortal,
        initiator: String, accelerator: Accelerator.Kind, consolePath: String, chap: CHAPReference? = nil,
        sshKeys: [String] = [], peers: [String] = [], extraOEM: [String] = []
    ) {
        self.vm = vm
        self.cluster = cluster
        self.vcpus = vcpus
        self.memoryMiB = memoryMiB
        self.bridge = bridge
        self.portal = portal
        self.initiator = initiator
        self.accelerator = accelerator
        self.consolePath = consolePath
        self.chap = chap
        self.sshKeys = sshKeys
        self.peers = peers
        self.extraOEM = extraOEM
    }

    public var xml: String {
        let e = XML.escape
        let type = accelerator == .kvm ? "kvm" : "qemu"
        let cpu = accelerator == .kvm ? "\n  <cpu mode='host-passthrough'/>" : ""
        let auth =
            chap.map {
                "\n        <auth username='\(e($0.user))'><secret type='iscsi' usage='\(e($0.secretUsage))'/></auth>"
            } ?? ""
        var oem = ["peerless.hostname=\(vm.name)", "peerless.cluster=\(cluster)"]
        oem += sshKeys.map { "peerless.ssh-key=\($0)" }
        if !peers.isEmpty { oem.append("peerless.peers=\(peers.joined(separator: ","))") }
        oem += extraOEM
        let oemEntries = oem.map { "        <entry>\(e($0))</entry>" }.joined(separator: "\n")
        return """
            <domain type='\(type)'>
              <name>\(e(vm.name))</name>
              <metadata>
                <peerless:vm xmlns:peerless='\(Self.metadataNamespace)' cluster='\(e(cluster))' index='\(vm.index)'/>
              </metadata>
              <memory unit='MiB'>\(memoryMiB)</memory>
              <vcpu>\(vcpus)</vcpu>
              <sysinfo type='smbios'>
                <oemStrings>
            \(oemEntries)
                </oemStrings>
              </sysinfo>
              <os>
                <type arch='x86_64' machine='pc'>hvm</type>
                <boot dev='hd'/>
                <smbios mode='sysinfo'/>
              </os>
              <features><acpi/><apic/></features>\(cpu)
              <clock offset='utc'/>
              <on_poweroff>destroy</on_poweroff>
              <on_reboot>restart</on_reboot>
              <on_crash>destroy</on_crash>
              <devices>
                <disk type='network' device='disk'>
                  <driver name='qemu' type='raw' cache='none'/>
                  <source protocol='iscsi' name='\(e(vm.diskIQN))/1'>
                    <host name='\(e(portal.host))' port='\(portal.port)'/>
                    <initiator><iqn name='\(e(initiator))'/></initiator>\(auth)
                  </source>
                  <target dev='vda' bus='virtio'/>
                </disk>
                <interface type='bridge'>
                  <mac address='\(e(vm.mac))'/>
                  <source bridge='\(e(bridge))'/>
                  <target dev='\(e(Naming.tap(bridge: bridge, index: vm.index)))'/>
                  <model type='virtio'/>
                </interface>
                <serial type='file'>
                  <source path='\(e(consolePath))' append='on'/>
                  <target port='0'/>
                </serial>
                <controller type='usb' model='none'/>
                <memballoon model='none'/>
              </devices>
            </domain>
            """
    }
}

public enum XML {
    /// Escapes text for use inside an attribute (either quote) or element.
    public static func escape(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count)
        for ch in s {
            switch ch {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "'": out += "&apos;"
            case "\"": out += "&quot;"
            default: out.append(ch)
            }
        }
        return out
    }
}
