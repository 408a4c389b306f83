import Foundation
import Testing

/// Interop with a gRPC implementation Parley did not write: Python `grpcio` with stubs that
/// `grpcio-tools` generates from `proto/`, driving SendMessage, GetHistory, GetPresence,
/// GetUser, JoinChat, Chat and Health against a live server, and `grpcio-reflection`
/// discovering and calling the service without the .proto files (`Tests/grpc_interop`).
///
/// Skipped when Python lacks grpcio, grpcio-tools or pytest, unless `PARLEY_REQUIRE_GRPC_INTEROP=1`
/// (set by `.ci/run`, which installs them) makes their absence a failure.
@Suite("gRPC interop with Python grpcio")
struct GRPCInteropTests {
    static var required: Bool { ProcessInfo.processInfo.environment["PARLEY_REQUIRE_GRPC_INTEROP"] == "1" }

    @Test("Python stubs from the same proto drive every RPC", .enabled(if: required || pythonGRPCAvailable))
    func pythonSuite() async throws {
        try await withServer { server in
            let result = try await runToCompletion(
                URL(fileURLWithPath: "/usr/bin/env"),
                ["python3", "-m", "pytest", "-q", "Tests/grpc_interop"],
                environment: ["PARLEY_GRPC_TARGET": "127.0.0.1:\(server.grpcPort)"],
                directory: BrowserTests.repository, timeout: .seconds(180)
            )
            #expect(result.status == 0, "Python gRPC suite failed:\n\(result.output)")
            #expect(result.output.contains("7 passed"), "unexpected pytest summary:\n\(result.output)")
        }
    }

    static var pythonGRPCAvailable: Bool { pythonCanImport("grpc, grpc_tools, grpc_reflection, pytest") }
}
