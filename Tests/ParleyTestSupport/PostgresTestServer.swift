import Foundation
import Synchronization

/// A private PostgreSQL server for tests: `initdb` into a temporary folder and `pg_ctl` on a
/// free loopback port, trust authentication for user `parley`. PostgreSQL refuses to run as
/// root, so as root it runs as the `postgres` user of the Debian package (`runuser`).
///
/// `PARLEY_TEST_DATABASE_URL` points the shared server at an existing database server instead.
/// `PARLEY_REQUIRE_POSTGRES=1` (set by `.ci/run`) makes an absent PostgreSQL a failure.
public final class PostgresTestServer: Sendable {
    public let port: Int
    let directory: String
    /// The URL of the server's `postgres` database.
    public let url: String
    private let external: Bool

    private init(port: Int, directory: String, url: String, external: Bool) {
        self.port = port
        self.directory = directory
        self.url = url
        self.external = external
    }

    public static var binDirectory: String? {
        let root = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).compactMap(Int.init).sorted()
        guard let version = versions.last else { return nil }
        let bin = "\(root)/\(version)/bin"
        return FileManager.default.isExecutableFile(atPath: bin + "/initdb") ? bin : nil
    }

    public static var isRequired: Bool { ProcessInfo.processInfo.environment["PARLEY_REQUIRE_POSTGRES"] == "1" }
    static var externalURL: String? { ProcessInfo.processInfo.environment["PARLEY_TEST_DATABASE_URL"].flatMap { $0.isEmpty ? nil : $0 } }

    /// PostgreSQL can be used (or is required, so that its absence fails loudly).
    public static var isAvailable: Bool {
        externalURL != nil || binDirectory != nil || isRequired
    }

    /// Whether a private server can be started (for tests that stop and restart it).
    public static var canStartPrivate: Bool { binDirectory != nil || isRequired }

    private static var isRoot: Bool { getuid() == 0 }

    /// Runs a PostgreSQL binary as a user PostgreSQL accepts.
    private static func run(_ tool: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let (executable, arguments) = try command(tool, arguments)
        return try runCommand(executable, arguments)
    }

    private static func runAsync(_ tool: String, _ arguments: [String]) async throws -> (status: Int32, output: String) {
        let (executable, arguments) = try command(tool, arguments)
        return try await runCommandAsync(executable, arguments)
    }

    private static func command(_ tool: String, _ arguments: [String]) throws -> (String, [String]) {
        guard let bin = binDirectory else { throw TestSupportError("PostgreSQL is not installed (apt-get install postgresql)") }
        if isRoot { return ("/usr/sbin/runuser", ["-u", "postgres", "--", "\(bin)/\(tool)"] + arguments) }
        return ("\(bin)/\(tool)", arguments)
    }

    /// Starts a new private server; with `tls`, it also accepts TLS, with that server
    /// certificate.
    public static func start(tls: TestCertificates? = nil) async throws -> PostgresTestServer {
        let directory = NSTemporaryDirectory() + "parley-pg-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        if isRoot { try await runCommandAsync("/bin/chown", ["postgres:postgres", directory]) }
        // initdb costs seconds of CPU: run it once per test process and copy its result.
        let template = try await Self.template()
        let copy = try await runCommandAsync("/bin/cp", ["-a", template, directory + "/data"])
        guard copy.status == 0 else { throw TestSupportError("copying the template cluster failed: \(copy.output)") }
        // The free port is chosen before the server binds it, and a loaded suite opens
        // thousands of loopback connections meanwhile: one may take it (a fresh-clone run
        // once failed so, "could not start server"). Each try picks another port.
        func attempt() throws -> PostgresTestServer {
            let port = try freeLoopbackPort()
            return PostgresTestServer(port: port, directory: directory, url: "postgres://parley@127.0.0.1:\(port)/postgres", external: false)
        }
        var started = try attempt()
        if let tls {
            // The server reads its key as its own user, and only a private key file.
            for (from, to) in [(tls.certificateFile, "server.pem"), (tls.keyFile, "server.key")] {
                let copied = try await runCommandAsync("/bin/cp", [from, directory + "/data/" + to])
                guard copied.status == 0 else { throw TestSupportError("copying \(from) failed: \(copied.output)") }
            }
            _ = try await runCommandAsync("/bin/chmod", ["600", directory + "/data/server.key"])
            if isRoot { _ = try await runCommandAsync("/bin/chown", ["postgres:postgres", directory + "/data/server.pem", directory + "/data/server.key"]) }
            let conf = directory + "/data/postgresql.auto.conf"
            let settings = "ssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\n"
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: conf))
            handle.seekToEndOfFile()
            handle.write(Data(settings.utf8))
            try handle.close()
        }
        for remaining in (0..<3).reversed() {
            do {
                try await started.launch()
                break
            } catch where remaining > 0 {
                started = try attempt()
            }
        }
        Self.cleanup.withLock { $0.append(directory) }
        return started
    }

    private static let templateTask = Mutex<Task<String, any Error>?>(nil)

    /// A freshly initialized, never started data directory, made once on first use.
    private static func template() async throws -> String {
        let task = templateTask.withLock { task in
            if let task { return task }
            let made = Task<String, any Error> {
                let directory = NSTemporaryDirectory() + "parley-pg-template-\(UUID().uuidString.prefix(8))"
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
                if isRoot { try await runCommandAsync("/bin/chown", ["postgres:postgres", directory]) }
                let initdb = try await runAsync("initdb", ["-D", directory + "/data", "-U", "parley", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])
                guard initdb.status == 0 else { throw TestSupportError("initdb failed: \(initdb.output)") }
                cleanup.withLock { $0.append(directory) }
                return directory + "/data"
            }
            task = made
            return made
        }
        return try await task.value
    }

    /// Starts the server again after `stop()`, on the same port and data.
    public func launch() async throws {
        let result = try await Self.runAsync("pg_ctl", [
            "-D", directory + "/data", "-l", directory + "/log", "-w", "-t", "120",
            "-o", "-p \(port) -k \(directory) -c listen_addresses=127.0.0.1 -c max_connections=200", "start",
        ])
        guard result.status == 0 else {
            let log = (try? String(contentsOfFile: directory + "/log", encoding: .utf8)).map { String($0.suffix(2000)) } ?? ""
            throw TestSupportError("pg_ctl start failed: \(result.output)\nserver log: \(log)")
        }
    }

    /// Stops the server at once, as a crash would (`-m immediate`).
    public func stop() async throws {
        guard !external else { return }
        _ = try await Self.runAsync("pg_ctl", ["-D", directory + "/data", "-m", "immediate", "-w", "stop"])
    }

    /// Stops the server and deletes its data.
    public func destroy() {
        guard !external else { return }
        _ = try? Self.run("pg_ctl", ["-D", directory + "/data", "-m", "immediate", "-w", "stop"])
        try? FileManager.default.removeItem(atPath: directory)
        Self.cleanup.withLock { $0.removeAll { $0 == directory } }
    }

    /// A new, empty database on this server; returns its URL.
    public func createDatabase() async throws -> String {
        let name = "parley_test_\(UUID().uuidString.prefix(12).lowercased().replacingOccurrences(of: "-", with: ""))"
        let result = try await runCommandAsync("/usr/bin/psql", ["-X", "-q", "-d", url, "-c", "CREATE DATABASE \(name)"])
        guard result.status == 0 else { throw TestSupportError("CREATE DATABASE failed: \(result.output)") }
        guard let slash = url.lastIndex(of: "/") else { throw TestSupportError("bad URL \(url)") }
        return String(url[...slash]) + name
    }

    /// Runs one SQL statement with psql (without TLS) and returns its unaligned output.
    public func query(_ sql: String) async throws -> String {
        let result = try await runCommandAsync("/usr/bin/psql", ["-X", "-q", "-t", "-A", "-d", url + "?sslmode=disable", "-c", sql])
        guard result.status == 0 else { throw TestSupportError("psql failed: \(result.output)") }
        return result.output
    }

    private static let sharedServer = Mutex<PostgresTestServer?>(nil)
    private static let sharedLock = Mutex(false)

    /// One server for the whole test process (or the external one), started on first use.
    public static func shared() async throws -> PostgresTestServer {
        if let server = sharedServer.withLock({ $0 }) { return server }
        if let externalURL {
            let server = PostgresTestServer(port: 0, directory: "", url: externalURL, external: true)
            sharedServer.withLock { $0 = server }
            return server
        }
        // Tests run in parallel: let one start it and the others wait.
        while sharedLock.withLock({ started in defer { started = true }; return started }) {
            if let server = sharedServer.withLock({ $0 }) { return server }
            try await Task.sleep(for: .milliseconds(50))
        }
        do {
            let server = try await start()
            sharedServer.withLock { $0 = server }
            return server
        } catch {
            sharedLock.withLock { $0 = false }
            throw error
        }
    }

    /// Data folders of servers still running, stopped when the test process exits.
    static let cleanup: Mutex<[String]> = {
        atexit {
            for directory in PostgresTestServer.cleanup.withLock({ $0 }) {
                _ = try? PostgresTestServer.run("pg_ctl", ["-D", directory + "/data", "-m", "immediate", "-w", "stop"])
                try? FileManager.default.removeItem(atPath: directory)
            }
        }
        return Mutex([])
    }()
}
