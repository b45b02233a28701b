// vcd: the Peerless peer daemon. Thin: parse arguments, read configuration, run.
import ArgumentParser
import Foundation
import Logging
import VCDaemon

@main
struct VCD: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vcd",
        abstract: "The Peerless peer daemon: one per physical node, no master.",
        discussion: """
            Every setting has a default that fits the embedded single-machine setup; a YAML file \
            overrides any of them (see systemd/vcd.yaml.example).
            """)

    @Option(name: .shortAndLong, help: "YAML configuration file.")
    var config: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel: Logger.Level = .info

    func run() async throws {
        var settings = DaemonConfiguration()
        if let config {
            guard let text = try? String(contentsOfFile: config, encoding: .utf8) else {
                throw ValidationError("cannot read the configuration file \(config)")
            }
            do {
                settings = try DaemonConfiguration.load(yaml: text)
            } catch {
                throw ValidationError("configuration file \(config): \(error)")
            }
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = logLevel
            return handler
        }
        var logger = Logger(label: "vcd")
        logger[metadataKey: "node"] = "\(settings.node)"
        do {
            try await Daemon.run(configuration: settings, logger: logger)
        } catch {
            FileHandle.standardError.write(Data("vcd: \(DaemonError.from(error))\n".utf8))
            throw ExitCode(1)
        }
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
