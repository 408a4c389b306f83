// swift-tools-version:6.1
// Coverage-guided fuzzers (libFuzzer) over Parley's pure decoders: the client command
// decoder, the RESP decoder, the broker codec and the HTTP query values. The targets compile
// the real source files (symbolic links into ../Sources); `scripts/fuzz` builds and runs them.
import PackageDescription

let package = Package(
    name: "parley-fuzz",
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3")
    ],
    targets: [
        // ParleyCore's model (names, limits, messages, events, errors): what the decoders use.
        .target(name: "ParleyCore"),
        .target(name: "FuzzDriver"),
        .executableTarget(name: "FuzzCommands", dependencies: ["ParleyCore", "FuzzDriver"]),
        .executableTarget(name: "FuzzRESP", dependencies: ["FuzzDriver", .product(name: "NIOCore", package: "swift-nio")]),
        .executableTarget(
            name: "FuzzBrokerCodec",
            dependencies: ["ParleyCore", "FuzzDriver", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .executableTarget(name: "FuzzQuery", dependencies: ["ParleyCore", "FuzzDriver"]),
    ]
)
