// swift-tools-version:6.1
import PackageDescription

/// Cells are linked statically: a static executable without Foundation starts
/// in about the time of /bin/true (docs/benchmarks.md), a dynamic one is 6x slower.
/// Our own Swift code builds with warnings as errors (dependencies do not):
/// one build serves `make check`, `make test` and `make run`.
let strictSwift: [SwiftSetting] = [.unsafeFlags(["-warnings-as-errors"])]
let staticCell: [SwiftSetting] = strictSwift + [.unsafeFlags(["-static-executable"])]
let staticCellLink: [LinkerSetting] = [.unsafeFlags(["-static-executable"])]
let strictC: [CSetting] = [.define("_GNU_SOURCE"), .unsafeFlags(["-Wall", "-Wextra", "-Werror"])]

let package = Package(
    name: "mcp-supervisor",
    platforms: [.macOS("13.0")],
    products: [
        .executable(name: "mcp-supervisor", targets: ["mcp-supervisor"]),
        .library(name: "CellKit", targets: ["CellKit"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/modelcontextprotocol/swift-sdk", exact: "0.12.1"),
        // Metrics (docs/operations.md): the swift-metrics API, a Prometheus registry behind it.
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        // The dashboard's HTTP server (docs/operations.md). Already in the graph through swift-sdk.
        .package(url: "https://github.com/apple/swift-nio", from: "2.65.0"),
        // The egress proxy's TLS termination for hosts with credential injection (docs/egress.md).
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
    ],
    targets: [
        // Everything that runs between clone and exec. C only, async-signal-safe.
        .target(name: "CSupervisorShim", cSettings: strictC),
        // Strict JSON (duplicate keys, depth, UTF-8) without Foundation, shared by
        // the supervisor and by cells.
        .target(name: "StrictJSON", swiftSettings: strictSwift),
        // The only module that calls libc, libseccomp, libcap and the shim.
        .target(
            name: "SupervisorPlatform",
            dependencies: ["CSupervisorShim"],
            swiftSettings: strictSwift,
            linkerSettings: [.linkedLibrary("seccomp"), .linkedLibrary("cap")]
        ),
        .target(
            name: "SupervisorCore",
            dependencies: [
                "StrictJSON", "SupervisorPlatform",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: strictSwift
        ),
        // The egress proxy (docs/egress.md): HTTP CONNECT and plain HTTP proxying
        // for workers in network namespaces of their own, on SwiftNIO.
        .target(
            name: "SupervisorEgress",
            dependencies: [
                "SupervisorCore", "SupervisorPlatform",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: strictSwift
        ),
        .target(
            name: "SupervisorServer",
            dependencies: [
                "SupervisorCore", "StrictJSON",
                .product(name: "MCP", package: "swift-sdk"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSwift
        ),
        .executableTarget(
            name: "mcp-supervisor",
            dependencies: [
                "SupervisorCore", "SupervisorServer", "SupervisorEgress", "StrictJSON",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: strictSwift
        ),

        // Writing cells.
        .target(name: "CellKit", dependencies: ["StrictJSON"], swiftSettings: strictSwift),
        .target(name: "CProbe", cSettings: strictC),
        .executableTarget(
            name: "echo-cell", dependencies: ["CellKit"],
            swiftSettings: staticCell, linkerSettings: staticCellLink),
        .executableTarget(
            name: "fs-cell", dependencies: ["CellKit"],
            swiftSettings: staticCell, linkerSettings: staticCellLink),
        .executableTarget(
            name: "probe-cell", dependencies: ["CellKit", "CProbe"],
            swiftSettings: staticCell, linkerSettings: staticCellLink),

        // Benchmark baseline (e): the SDK's own stdio server, no sandbox.
        .executableTarget(
            name: "sdk-echo-server",
            dependencies: [.product(name: "MCP", package: "swift-sdk")],
            path: "tools/bench/sdk-echo-server"),
        // Micro-benchmark: per-call breaker and behaviour-profile scoring (docs/benchmarks.md).
        .executableTarget(
            name: "resilience-bench", dependencies: ["SupervisorCore", "StrictJSON"],
            path: "tools/bench/resilience-bench", swiftSettings: strictSwift),

        .testTarget(name: "StrictJSONTests", dependencies: ["StrictJSON"], swiftSettings: strictSwift),
        // The egress proxy's request parsing and rules, on embedded channels (no fork).
        .testTarget(
            name: "EgressTests",
            dependencies: [
                "SupervisorEgress", "SupervisorCore", "SupervisorPlatform",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: strictSwift),
        .testTarget(
            name: "SupervisorCoreTests", dependencies: ["SupervisorCore", "StrictJSON"], swiftSettings: strictSwift),
        // The command line (flags from the settings table), without forking.
        .testTarget(
            name: "CommandLineTests",
            dependencies: [
                "mcp-supervisor", "SupervisorCore", "SupervisorServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strictSwift),
        .testTarget(
            name: "SystemTests",
            dependencies: [
                "SupervisorCore", "SupervisorPlatform", "SupervisorEgress", "StrictJSON",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSwift),
    ]
)
