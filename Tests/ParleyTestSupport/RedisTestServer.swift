import Foundation
import Synchronization

/// A private `redis-server` for tests, on a free loopback port, that can be killed and
/// started again on the same port. `PARLEY_REQUIRE_REDIS=1` makes its absence a failure.
public final class RedisTestServer: Sendable {
    public let port: Int
    /// Set when the server speaks only TLS, with these certificates.
    public let tls: TestCertificates?
    private let process = Mutex<SpawnedProcess?>(nil)

    private init(port: Int, tls: TestCertificates?) {
        self.port = port
        self.tls = tls
    }

    public var url: String { "\(tls == nil ? "redis" : "rediss")://127.0.0.1:\(port)" }

    public static let executable = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .first { FileManager.default.isExecutableFile(atPath: $0) } ?? "/usr/bin/redis-server"

    public static var isAvailable: Bool {
        FileManager.default.isExecutableFile(atPath: executable) || ProcessInfo.processInfo.environment["PARLEY_REQUIRE_REDIS"] == "1"
    }

    /// With `tls`, the server listens for TLS only (no plaintext port), with the server
    /// certificate of `tls`, and asks clients for no certificate.
    public static func start(tls: TestCertificates? = nil) async throws -> RedisTestServer {
        let server = RedisTestServer(port: try freeLoopbackPort(), tls: tls)
        try await server.launch()
        return server
    }

    /// Starts the server (again, after `kill`), empty, on the same port.
    public func launch() async throws {
        let listen = if let tls {
            ["--port", "0", "--tls-port", "\(port)", "--tls-cert-file", tls.certificateFile, "--tls-key-file", tls.keyFile,
             "--tls-ca-cert-file", tls.caFile, "--tls-auth-clients", "no"]
        } else {
            ["--port", "\(port)"]
        }
        let process = try SpawnedProcess.spawn(URL(fileURLWithPath: Self.executable), listen + [
            "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--loglevel", "warning", "--dir", NSTemporaryDirectory(),
        ])
        self.process.withLock { $0 = process }
        for _ in 0..<250 {
            if canConnect() { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw TestSupportError("redis-server on port \(port) did not start")
    }

    /// SIGKILL, as a crash would; waits until the process is gone.
    public func kill() {
        guard let process = process.withLock({ value in defer { value = nil }; return value }) else { return }
        if process.isRunning {
            Foundation.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    private func canConnect() -> Bool {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        return withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }

    deinit {
        kill()
    }
}
