import Foundation
import Logging
import ParleyCore
@testable import ParleyServer
import ServiceLifecycle
import Synchronization

/// A live Parley server in this process, on a random port.
struct TestServer {
    let server: ParleyServer
    let port: Int
    let grpcPort: Int
    let group: ServiceGroup
    let task: Task<Void, any Error>

    var engine: Engine { server.engine }

    /// Starts a server on the default embedded store (SQLite, in a fresh directory), as
    /// `parley serve` runs: bad input must be tried where a crash can hide. Use `withServer`
    /// to have it stopped.
    static func start(
        store: (any MessageStore)? = nil, _ configure: (inout ServerConfiguration) -> Void = { _ in }
    ) async throws -> TestServer {
        var configuration = ServerConfiguration()
        configuration.host = "127.0.0.1"
        configuration.port = 0
        configuration.grpcPort = 0
        configuration.storage = .sqlite
        configuration.dataDirectory = temporaryDirectory()
        configuration.logLevel = .warning
        configure(&configuration)
        let ready = AsyncQueue<Int>()
        let grpcReady = AsyncQueue<Int>()
        let server = try await ParleyServer.build(
            configuration, logger: Logger(label: "test"), store: store,
            onListening: { port in ready.push(port) },
            onGRPCListening: { port in grpcReady.push(port) }
        )
        let group = server.makeServiceGroup(gracefulShutdownSignals: [])
        let task = Task { try await group.run() }
        guard let port = await ready.pop(timeout: .seconds(10)), let grpcPort = await grpcReady.pop(timeout: .seconds(10)) else {
            task.cancel()
            throw TestFailure("server did not start")
        }
        return TestServer(server: server, port: port, grpcPort: grpcPort, group: group, task: task)
    }

    func stop() async {
        await group.triggerGracefulShutdown()
        _ = try? await task.value
        if server.configuration.dataDirectory.contains("parley-test-") {
            try? FileManager.default.removeItem(atPath: server.configuration.dataDirectory)
        }
    }

    func url(_ path: String) -> String { "http://127.0.0.1:\(port)\(path)" }
}

/// Runs `body` against a fresh server and always stops it.
func withServer<T>(
    store: (any MessageStore)? = nil,
    _ configure: (inout ServerConfiguration) -> Void = { _ in },
    _ body: (TestServer) async throws -> T
) async throws -> T {
    let server = try await TestServer.start(store: store, configure)
    do {
        let result = try await body(server)
        await server.stop()
        return result
    } catch {
        await server.stop()
        throw error
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

func temporaryDirectory() -> String {
    let path = NSTemporaryDirectory() + "parley-test-" + UUID().uuidString
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}
