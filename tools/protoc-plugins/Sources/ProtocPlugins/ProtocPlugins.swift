// Intentionally empty: this package only exists to build the protoc plugins
// `protoc-gen-swift` (swift-protobuf) and `protoc-gen-grpc-swift-2` (grpc-swift-protobuf).
