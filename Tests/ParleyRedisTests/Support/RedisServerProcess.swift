import Foundation
import ParleyTestSupport
import NIOCore
import NIOPosix
import Synchronization

@testable import ParleyRedis

/// A real `redis-server` child process on a free loopback port, for one test.
final class RedisServerProcess: Sendable {
    let port: Int
    let password: String?
    private let process: Mutex<SpawnedProcess?>

    private init(port: Int, password: String?) {
        self.port = port
        self.password = password
        self.process = Mutex(nil)
    }

    /// The configuration of a client for this server (password included).
    var configuration: RedisConfiguration {
        var configuration = RedisConfiguration(host: "127.0.0.1", port: port, password: password)
        configuration.connectTimeout = .seconds(2)
        configuration.commandTimeout = .seconds(5)
        configuration.reconnect = RedisBackoff(initialDelay: .milliseconds(20), maximumDelay: .milliseconds(200))
        return configuration
    }

    /// Starts a server; tries a few ports in case another process took the free one first.
    static func start(password: String? = nil) async throws -> RedisServerProcess {
        var lastError: (any Error)?
        for _ in 0..<3 {
            let server = RedisServerProcess(port: try await freePort(), password: password)
            do {
                try await server.launch()
                return server
            } catch {
                server.kill()
                lastError = error
            }
        }
        throw lastError ?? RedisError(.connectionFailed, "redis-server did not start")
    }

    /// Starts a new process on the same port, after `kill()`.
    func launch() async throws {
        var arguments = [
            "--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--loglevel", "warning", "--dir", NSTemporaryDirectory(),
        ]
        if let password { arguments += ["--requirepass", password] }
        let process = try SpawnedProcess.spawn(URL(fileURLWithPath: Self.executable), arguments)
        self.process.withLock { $0 = process }
        try await waitUntilReady()
    }

    /// SIGKILL, as a crash would; waits until the process is gone.
    func kill() {
        guard let process = self.process.withLock({ value in defer { value = nil }; return value }) else { return }
        if process.isRunning {
            Foundation.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    /// Sends `signal` (SIGSTOP, SIGCONT...) to the server process.
    func signal(_ signal: Int32) {
        process.withLock { process in
            if let process { _ = Foundation.kill(process.processIdentifier, signal) }
        }
    }

    /// Polls with PING until the server answers (NOAUTH counts as an answer), for at most 5 s.
    private func waitUntilReady() async throws {
        var configuration = RedisConfiguration(host: "127.0.0.1", port: port)
        configuration.protocolVersion = .resp2
        configuration.connectTimeout = .milliseconds(200)
        for _ in 0..<250 {
            if let connection = try? await RedisConnection.connect(configuration: configuration) {
                let reply: Bool
                do {
                    _ = try await connection.send("PING")
                    reply = true
                } catch let error as RedisError {
                    reply = error.code == .serverError
                }
                await connection.close()
                if reply { return }
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw RedisError(.connectionFailed, "redis-server on port \(port) did not become ready")
    }

    static let executable = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .first { FileManager.default.isExecutableFile(atPath: $0) } ?? "/usr/bin/redis-server"

    /// redis-server is installed, or `PARLEY_REQUIRE_REDIS=1` (set by `.ci/run`) makes its
    /// absence a failure instead of a skip.
    static var isAvailable: Bool {
        FileManager.default.isExecutableFile(atPath: executable)
            || ProcessInfo.processInfo.environment["PARLEY_REQUIRE_REDIS"] == "1"
    }

    /// Binds port 0 on loopback, reads the port the kernel chose, and releases it.
    static func freePort() async throws -> Int {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .bind(host: "127.0.0.1", port: 0)
            .get()
        let port = channel.localAddress?.port ?? 0
        try await channel.close()
        return port
    }
}

/// Runs `body` with a fresh server and kills it afterwards, whatever happens.
func withRedisServer<Result>(
    password: String? = nil,
    _ body: (RedisServerProcess) async throws -> Result
) async throws -> Result {
    let server = try await RedisServerProcess.start(password: password)
    do {
        let result = try await body(server)
        server.kill()
        return result
    } catch {
        server.kill()
        throw error
    }
}
