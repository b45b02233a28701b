import ArgumentParser

/// The OS administrator's command tree.
public struct VC: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "vc", abstract: "Peerless: create, suspend, resume and destroy virtual clusters.",
        discussion: "Shell completions: vc --generate-completion-script bash|zsh|fish",
        version: "0.1.0",
        subcommands: [
            ImageCommand.self, ClusterCommand.self, VMCommand.self, NodeCommand.self, Apply.self, ExplainCommand.self,
        ])

    public init() {}
}
