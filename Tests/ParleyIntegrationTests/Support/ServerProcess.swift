import Foundation
import ParleyTestSupport

/// The real `parley` executable in a child process, for tests that kill or signal it.
final class ServerProcess: Sendable {
    private let process: SpawnedProcess
    let port: Int
    let grpcPort: Int
    private let log: URL

    private init(process: SpawnedProcess, port: Int, grpcPort: Int, log: URL) {
        self.process = process
        self.port = port
        self.grpcPort = grpcPort
        self.log = log
    }

    /// The built `parley` binary next to the test bundle.
    static var executable: URL {
        var directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for _ in 0..<3 where !FileManager.default.fileExists(atPath: directory.appendingPathComponent("parley").path) {
            directory = directory.deletingLastPathComponent()
        }
        return directory.appendingPathComponent("parley")
    }

    /// Starts `parley serve --port 0` with `arguments` and waits for its listening line. The
    /// child writes to a log file that is polled: no pipes or dispatch sources, which
    /// Foundation on Linux handles poorly when several children run at once.
    static func start(_ arguments: [String], environment: [String: String] = [:]) async throws -> ServerProcess {
        try await launch(
            ["serve", "--host", "127.0.0.1", "--port", "0", "--grpc-port", "0"] + arguments, environment: environment,
            http: #"listening on http://[0-9.]+:(\d+)"#, grpc: #"gRPC listening on [0-9.]+:(\d+)"#
        )
    }

    /// Starts `parley gateway --port 0` with `arguments` (its upstreams); `grpcPort` is 0.
    static func startGateway(_ arguments: [String], environment: [String: String] = [:]) async throws -> ServerProcess {
        try await launch(
            ["gateway", "--host", "127.0.0.1", "--port", "0"] + arguments, environment: environment,
            http: #"gateway listening on http://[0-9.]+:(\d+)"#, grpc: nil
        )
    }

    private static func launch(_ arguments: [String], environment: [String: String], http: String, grpc: String?) async throws -> ServerProcess {
        let log = URL(fileURLWithPath: temporaryDirectory()).appendingPathComponent("parley.log")
        let process = try SpawnedProcess.spawn(
            executable, arguments, environment: ProcessInfo.processInfo.environment.merging(environment) { $1 }, output: log.path
        )
        let deadline = ContinuousClock.now + .seconds(20)
        var seen = ""
        while ContinuousClock.now < deadline, process.isRunning {
            seen = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
            if let range = seen.range(of: http, options: .regularExpression) {
                let port = Int(seen[range].split(separator: ":").last!)!
                if let grpc {
                    if let grpcRange = seen.range(of: grpc, options: .regularExpression) {
                        return ServerProcess(process: process, port: port, grpcPort: Int(seen[grpcRange].split(separator: ":").last!)!, log: log)
                    }
                } else {
                    return ServerProcess(process: process, port: port, grpcPort: 0, log: log)
                }
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        if process.isRunning { process.terminate() }
        throw TestFailure("parley did not start: \(seen)")
    }

    /// What the process logged so far.
    var logText: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }

    /// The process's resident memory, in KiB (Linux).
    var residentKiB: Int? { status("VmRSS:") }

    /// The process's resident anonymous memory (its heap and stacks, not the pages of its
    /// executable and libraries that running new code brings in), in KiB (Linux).
    var anonymousKiB: Int? { status("RssAnon:") }

    private func status(_ field: String) -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8) else { return nil }
        let line = status.split(separator: "\n").first { $0.hasPrefix(field) }
        return line.flatMap { Int($0.split(separator: " ").dropFirst().first ?? "") }
    }

    func kill(_ signal: Int32) {
        Foundation.kill(process.processIdentifier, signal)
    }

    /// Waits for the process to exit; returns its status, or nil if still running after `timeout`.
    func waitForExit(timeout: Duration) async -> Int32? {
        await process.waitForExit(timeout: timeout)
    }

    deinit {
        if process.isRunning { process.terminate() }
    }
}
