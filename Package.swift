// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "Peerless",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "vcd", targets: ["vcd"]),
        .executable(name: "vc", targets: ["vc"]),
        .executable(name: "vcnode", targets: ["vcnode"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.24.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.0"),
    ],
    targets: [
        // C behind one small door each.
        .systemLibrary(name: "CLibvirt", pkgConfig: "libvirt", providers: [.apt(["libvirt-dev"])]),
        .systemLibrary(name: "CISCSI", pkgConfig: "libiscsi", providers: [.apt(["libiscsi-dev"])]),
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd", providers: [.apt(["libsystemd-dev"])]),
        .target(name: "CLinux"),

        // Safe Swift wrappers: the only importers of the C modules.
        .target(name: "Libvirt", dependencies: ["CLibvirt", .product(name: "NIOPosix", package: "swift-nio")]),
        .target(name: "ISCSI", dependencies: ["CISCSI", .product(name: "NIOPosix", package: "swift-nio")]),
        .target(name: "Systemd", dependencies: ["CSystemd"]),

        // Pure model: names, specs, plans, XML. No I/O.
        .target(name: "VCModel"),

        // Host programs (tgtadm, ip, dnsmasq, qemu-img) run without a shell.
        .target(
            name: "VCHost",
            dependencies: [
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "VCCatalog",
            dependencies: [
                "VCModel",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "VCStorage",
            dependencies: [
                "VCModel", "VCHost", "ISCSI", "CLinux",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .target(
            name: "VCNetwork",
            dependencies: ["VCModel", "VCHost", .product(name: "Logging", package: "swift-log")]
        ),
        .target(
            name: "VCDaemon",
            dependencies: [
                "VCModel", "VCCatalog", "VCStorage", "VCNetwork", "VCHost", "Libvirt", "Systemd", "VCClient",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        .target(
            name: "VCClient",
            dependencies: ["VCModel", .product(name: "AsyncHTTPClient", package: "async-http-client")]
        ),
        .target(
            name: "VCCommands",
            dependencies: [
                "VCModel", "VCClient",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        .executableTarget(
            name: "vcd",
            dependencies: ["VCDaemon", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .executableTarget(name: "vc", dependencies: ["VCCommands"]),
        // Measures the storage path in-process for bench/; not installed.
        .executableTarget(
            name: "peerless-bench",
            dependencies: [
                "VCStorage", "VCHost", "ISCSI", "VCModel",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(name: "vcnode", dependencies: ["VCCommands"]),

        .testTarget(
            name: "UnitTests",
            dependencies: [
                "VCModel", "VCStorage", "VCCatalog", "VCDaemon", "VCNetwork", "ISCSI", "Libvirt",
                .product(name: "Hummingbird", package: "hummingbird"),
            ]),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "VCModel", "ISCSI", "VCStorage", "VCCatalog", .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
