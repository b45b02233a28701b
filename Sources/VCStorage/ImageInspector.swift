import Foundation
import VCHost

/// What an image file is, as far as importing it is concerned.
public struct ImageFacts: Sendable, Equatable {
    /// `raw` or `qcow2`.
    public var format: String
    /// The size of the disk it holds.
    public var virtualSize: UInt64
    public var fileSize: UInt64
}

/// Tells a disk image from any other file. `qemu-img info` calls every file "raw", so a
/// raw file must also carry a partition table, a boot sector or a filesystem that blkid
/// recognises.
public enum ImageInspector {
    public static func inspect(_ path: String) async throws(StorageError) -> ImageFacts {
        var st = stat()
        guard stat(path, &st) == 0 else { throw .unreadable(path: path, reason: errnoText()) }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw .notADiskImage(path: path, reason: "it is not a regular file")
        }
        guard access(path, R_OK) == 0 else { throw .unreadable(path: path, reason: errnoText()) }
        let info: CommandOutput
        do {
            info = try await HostCommand.run("qemu-img", ["info", "--output", "json", path], timeout: .seconds(60))
        } catch {
            throw .notADiskImage(path: path, reason: error.reason)
        }
        struct Info: Decodable {
            struct Specific: Decodable {
                struct Data: Decodable {
                    var dataFile: String?
                    enum CodingKeys: String, CodingKey { case dataFile = "data-file" }
                }
                var data: Data?
            }
            var format: String
            var virtualSize: UInt64
            var backingFilename: String?
            var formatSpecific: Specific?
            enum CodingKeys: String, CodingKey {
                case format
                case virtualSize = "virtual-size"
                case backingFilename = "backing-filename"
                case formatSpecific = "format-specific"
            }
        }
        guard let parsed = try? JSONDecoder().decode(Info.self, from: Data(info.stdout.utf8)) else {
            throw .notADiskImage(path: path, reason: "qemu-img could not describe it")
        }
        switch parsed.format {
        case "qcow2":
            // vcd reads the image as root: a backing or data file would let the image pull
            // in any file of this host.
            if let backing = parsed.backingFilename {
                throw .notADiskImage(
                    path: path, reason: "it has a backing file (\(backing)); flatten it with qemu-img convert first")
            }
            if let data = parsed.formatSpecific?.data?.dataFile {
                throw .notADiskImage(path: path, reason: "it has an external data file (\(data)); flatten it first")
            }
        case "raw":
            guard parsed.virtualSize >= 512 else {
                throw .notADiskImage(path: path, reason: "it is smaller than one sector")
            }
            // blkid exits 2 when it finds nothing it knows.
            let probe = try? await HostCommand.run("blkid", ["-p", "-o", "export", path], timeout: .seconds(30))
            let found = (probe?.stdout ?? "").split(separator: "\n").contains {
                $0.hasPrefix("PTTYPE=") || $0.hasPrefix("TYPE=")
            }
            guard found else {
                throw .notADiskImage(path: path, reason: "no partition table, boot sector or filesystem found")
            }
        default:
            throw .notADiskImage(path: path, reason: "its format is \(parsed.format)")
        }
        return ImageFacts(format: parsed.format, virtualSize: parsed.virtualSize, fileSize: UInt64(st.st_size))
    }
}
