// peerless-bench: times the storage path of a VM disk in-process, with the same code vcd
// runs (StoragePool.clone, TargetExporter.export, ISCSIClient.verifyDisk). bench/*.sh call
// it and measure their references in the same run.
import ArgumentParser
import Foundation
import ISCSI
import Logging
import VCHost
import VCModel
import VCStorage

@main
struct PeerlessBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "peerless-bench", abstract: "Storage-path timings for bench/.",
        subcommands: [Clone.self, Provision.self, Spawn.self, Write.self])
}

struct Timings: Encodable {
    var runs: Int
    var medianMs: Double
    var minMs: Double
    var maxMs: Double

    init(_ samples: [Duration]) {
        let ms = samples.map { Double($0.components.attoseconds) / 1e15 + Double($0.components.seconds) * 1000 }
            .sorted()
        runs = ms.count
        medianMs = ms[ms.count / 2]
        minMs = ms.first ?? 0
        maxMs = ms.last ?? 0
    }

    func print() {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        Swift.print(String(decoding: try! e.encode(self), as: UTF8.self))
    }
}

func makePool(_ path: String) -> StoragePool {
    var logger = Logger(label: "bench")
    logger.logLevel = .warning
    return StoragePool(configuration: PoolConfiguration(path: path), logger: logger)
}

struct Clone: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Reflink-clone a pool file N times; keep the last clone.")
    @Option(help: "Pool root (must reflink).") var pool: String
    @Option(help: "Pool-relative source file.") var source: String
    @Option(help: "Pool-relative name of the clone to keep.") var keep: String
    @Option var runs = 10

    func run() async throws {
        let p = makePool(pool)
        var samples: [Duration] = []
        for i in 0..<runs {
            let target = i == runs - 1 ? keep : "bench-clone-\(i).raw"
            try? p.remove(target)
            let t0 = ContinuousClock.now
            try p.clone(source, to: target)
            samples.append(ContinuousClock.now - t0)
            if i != runs - 1 { try p.remove(target) }
        }
        Timings(samples).print()
    }
}

struct Provision: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Provision a VM disk N times: clone, export over iSCSI, check it with libiscsi.")
    @Option(help: "Pool root (must reflink).") var pool: String
    @Option(help: "Pool-relative golden image.") var image: String
    @Option var portal = "127.0.0.1:3260"
    @Option var runs = 20

    func run() async throws {
        var logger = Logger(label: "bench")
        logger.logLevel = .warning
        let p = makePool(pool)
        let exporter = TargetExporter(logger: logger)
        let initiator = Naming.initiatorIQN(node: "bench")
        let iscsi = ISCSIClient(initiator: initiator)
        let size = try p.size(image)
        var samples: [Duration] = []
        for i in 0..<runs {
            let file = "disks/bench/bench-\(i).raw"
            let iqn = Naming.diskIQN(vm: "bench-\(i)")
            // As vcd does it: a fresh CHAP secret per disk, bound before the initiator.
            var random = SystemRandomNumberGenerator()
            let chap = CHAPCredentials(
                user: Naming.chapUser(vm: "bench-\(i)"), password: ClusterSecrets.password(using: &random))
            let t0 = ContinuousClock.now
            try p.clone(image, to: file)
            _ = try await exporter.export(iqn: iqn, file: p.path(file), initiators: [initiator], chap: chap)
            _ = try await iscsi.verifyDisk(ISCSITarget(portal: portal, iqn: iqn), expectedBytes: size, chap: chap)
            samples.append(ContinuousClock.now - t0)
            try await exporter.unexport(iqn: iqn, account: chap.user)
            try p.remove(file)
        }
        try await iscsi.shutdown()
        Timings(samples).print()
    }
}

struct Spawn: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Time running a trivial host program (the cost under every tgtadm call).")
    @Option var runs = 50

    func run() async throws {
        var samples: [Duration] = []
        for _ in 0..<runs {
            let t0 = ContinuousClock.now
            try await HostCommand.run("true", [])
            samples.append(ContinuousClock.now - t0)
        }
        Timings(samples).print()
    }
}

struct Write: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Copy a file to an iSCSI LUN with the import pipeline; print MiB/s.")
    @Option var portal = "127.0.0.1:3260"
    @Option var iqn: String
    @Option var file: String
    @Option var depth = 16
    @Option var chunkKiB = 1024

    func run() async throws {
        let client = ISCSIClient(initiator: Naming.initiatorIQN(node: "bench"))
        let fd = open(file, O_RDONLY)
        defer { close(fd) }
        var st = stat()
        fstat(fd, &st)
        let length = UInt64(st.st_size)
        let (depth, chunk) = (self.depth, chunkKiB * 1024)
        let t0 = ContinuousClock.now
        _ = try await client.withSession(ISCSITarget(portal: portal, iqn: iqn)) { session in
            try session.copy(fromFile: fd, length: length, blockSize: 512, chunkSize: chunk, depth: depth) { _ in }
        }
        let seconds = Double((ContinuousClock.now - t0) / .milliseconds(1)) / 1000
        print(String(format: "%.0f MiB/s (%.2f s)", Double(length) / 1_048_576 / seconds, seconds))
        try await client.shutdown()
    }
}
