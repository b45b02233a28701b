import ArgumentParser
import Foundation
import VCModel

struct VMCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vm", abstract: "Single VMs of a cluster.", subcommands: [VMConsole.self])
}

struct VMConsole: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "console", abstract: "Show a VM's serial console output.", aliases: ["log"])

    @OptionGroup var global: GlobalOptions
    @Argument(help: "VM name, e.g. demo-1.") var name: String
    @Flag(name: .shortAndLong, help: "Keep printing new output until interrupted.") var follow = false

    func run() async throws {
        try await CLI.run {
            var offset: UInt64 = 0
            repeat {
                let (bytes, next) = try await global.client.raw(
                    "/v1/vms/\(name)/console?offset=\(offset)", header: "X-Console-Offset")
                if !bytes.isEmpty { FileHandle.standardOutput.write(Data(bytes)) }
                offset = next.flatMap(UInt64.init) ?? offset + UInt64(bytes.count)
                if follow { try await Task.sleep(for: .milliseconds(500)) }
            } while follow
        }
    }
}
