/// A golden image's import as the storage node opens it: the pool file it writes, the
/// temporary target that exposes that file, the one initiator the target admits (the
/// importing node's) and the CHAP account made for it. Every name derives from the
/// image's name and its catalog record, never from what a caller sends, so a node that
/// asks the storage node to open an import can neither name another file nor let another
/// initiator in.
public struct ImageImport: Sendable, Equatable {
    public var image: String
    /// The node whose vcd reads the source file and writes it over iSCSI.
    public var importer: String
    public var sizeBytes: UInt64

    public init(image: String, importer: String, sizeBytes: UInt64) {
        self.image = image
        self.importer = importer
        self.sizeBytes = sizeBytes
    }

    public var file: String { GoldenImage.file(for: image) }
    public var iqn: String { Naming.importIQN(image: image) }
    public var initiator: String { Naming.initiatorIQN(node: importer) }
    public var chapUser: String { Naming.chapUser(importing: image) }

    /// LUNs are whole 512-byte blocks: the pool file of a disk of `virtualSize` bytes.
    public static func lunBytes(virtualSize: UInt64) -> UInt64 { (virtualSize + 511) / 512 * 512 }

    /// What the storage node `storageNode` opens for `importer`, given the image's catalog
    /// record and the pool's free bytes; throws what keeps it from opening. The record is
    /// the authority: it was written by the importer before it asked, and names the size.
    public static func opening(
        image: String, importer: String, record: GoldenImage?, freeBytes: UInt64, storageNode: String
    ) throws(ModelError) -> ImageImport {
        guard let record else {
            throw .importNotOpen(image: image, reason: "the catalog has no record of it (it was discarded)")
        }
        guard record.state == .importing else {
            throw .importNotOpen(image: image, reason: "it is \(record.state.rawValue), not being imported")
        }
        guard record.node == importer else {
            throw .importNotOpen(image: image, reason: "node \(record.node) imports it, not \(importer)")
        }
        guard record.file == GoldenImage.file(for: image) else {
            throw .importNotOpen(image: image, reason: "its record names the pool file \(record.file)")
        }
        guard record.sizeBytes > 0, record.sizeBytes % 512 == 0 else {
            throw .importNotOpen(image: image, reason: "its size \(record.sizeBytes) is not a whole number of blocks")
        }
        guard record.sizeBytes < freeBytes else {
            throw .imageDoesNotFit(image: image, neededBytes: record.sizeBytes, freeBytes: freeBytes, node: storageNode)
        }
        return ImageImport(image: image, importer: importer, sizeBytes: record.sizeBytes)
    }

    /// The interrupted imports `node` discards: its own (the caller skips those a task of
    /// its own still runs) and, when it is the storage node, those whose importer holds no
    /// lease, which nobody else would ever finish. `live` is nil when the node list could
    /// not be read: then only its own.
    public static func orphans(_ images: [GoldenImage], node: String, isStorageNode: Bool, live: Set<String>?)
        -> [GoldenImage]
    {
        images.filter { image in
            guard image.state == .importing else { return false }
            if image.node == node { return true }
            guard isStorageNode, let live else { return false }
            return !live.contains(image.node)
        }
    }
}
