import ArgumentParser
import Foundation
import VCModel

struct ImageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image", abstract: "Golden images that VMs boot from.",
        subcommands: [ImageImport.self, ImageList.self, ImageDelete.self])
}

struct ImageImport: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import", abstract: "Import a raw or qcow2 disk image into the storage pool.",
        discussion:
            "The file must be readable on the node whose vcd you talk to; any node takes an import. It is written into the storage node's pool through iSCSI."
    )

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Name for the image (lowercase letters, digits, '-').") var name: String
    @Argument(help: "Path of the raw or qcow2 file.", completion: .file()) var file: String

    func run() async throws {
        try await CLI.run {
            try NameRule.checkImage(name)
            let path = URL(fileURLWithPath: file).standardizedFileURL.path
            let client = try global.client
            // Another node's vcd reads the path on that node: only it can tell.
            guard !client.isLocal || FileManager.default.isReadableFile(atPath: path) else {
                CLI.fail("cannot read \(file): no such readable file", code: 2)
            }
            let view = ProgressView(quiet: global.output == .json)
            let final = try await client.operation(
                .post, "/v1/images", body: ImportImageRequest(name: name, path: path)
            ) {
                view.show($0)
            }
            guard let image = final.image else { return }
            if global.output == .json {
                print(Render.json(image))
            } else {
                print("imported \(image.name): \(ByteSize.describe(bytes: image.sizeBytes)) (\(image.sourceFormat))")
            }
        }
    }
}

struct ImageList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "List golden images.", aliases: ["ls"])

    @OptionGroup var global: GlobalOptions

    func run() async throws {
        try await CLI.run {
            let images: [GoldenImage] = try await global.client.get("/v1/images")
            if global.output == .json { return print(Render.json(images)) }
            let rows = images.map {
                [
                    $0.name, $0.state.rawValue, ByteSize.describe(bytes: $0.sizeBytes), $0.sourceFormat,
                    Render.date($0.importedAt),
                ]
            }
            print(Render.table(["NAME", "STATE", "SIZE", "FROM", "IMPORTED"], rows))
        }
    }
}

struct ImageDelete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete", abstract: "Delete a golden image no cluster uses.", aliases: ["rm"])

    @OptionGroup var global: GlobalOptions
    @Argument(help: "Image name.") var name: String

    func run() async throws {
        try await CLI.run {
            let _: [String: String] = try await global.client.delete("/v1/images/\(name)")
            if global.output == .json { return print(Render.json(["deleted": name])) }
            print("deleted image \(name)")
        }
    }
}
