// swift-tools-version:6.1
// Builds the two protoc plugins that generate Parley's gRPC code (see scripts/generate-grpc).
// A separate package so that the server's own build never compiles them: the generated code is
// committed under Sources/ParleyGRPC/Generated/.
//
//   swift build -c release --package-path tools/protoc-plugins --product protoc-gen-swift
//   swift build -c release --package-path tools/protoc-plugins --product protoc-gen-grpc-swift-2
import PackageDescription

let package = Package(
    name: "protoc-plugins",
    platforms: [.macOS(.v15)],
    products: [],
    dependencies: [
        // `traits: []` as in the server's manifest (enabled traits make SwiftPM rebuild needlessly).
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0", traits: []),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", from: "2.4.1"),
    ],
    targets: [
        // Never built by the script. It exists so that SwiftPM keeps both dependencies in the
        // graph; their executable products are what we build.
        .target(
            name: "ProtocPlugins",
            dependencies: [
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
            ],
            path: "Sources/ProtocPlugins"
        ),
    ]
)
