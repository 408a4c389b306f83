import Foundation
import Synchronization

/// Runs a command to its end and returns its status and output (both streams, through a
/// file). Spawned and awaited with posix_spawn and waitpid rather than `Process`: Foundation
/// on Linux sees a child as running until every process that inherited its descriptors exits,
/// and `pg_ctl start` leaves the server running.
@discardableResult
func runCommand(_ executable: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
    let log = NSTemporaryDirectory() + "parley-command-\(UUID().uuidString).log"
    defer { try? FileManager.default.removeItem(atPath: log) }
    // Nothing else of this process goes to the child (`SpawnedProcess` closes every other
    // descriptor): `pg_ctl` leaves a server running that would otherwise hold copies of the
    // tests' sockets (and keep their ports bound) for its whole life.
    let process = try SpawnedProcess.spawn(URL(fileURLWithPath: executable), arguments, output: log)
    process.waitUntilExit()
    return (process.terminationStatus ?? -1, (try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
}

/// `runCommand` on a Dispatch thread: waiting for a child must not block one of the few
/// threads that run every test's tasks.
@discardableResult
func runCommandAsync(_ executable: String, _ arguments: [String]) async throws -> (status: Int32, output: String) {
    try await withCheckedThrowingContinuation { continuation in
        DispatchQueue.global().async {
            continuation.resume(with: Result { try runCommand(executable, arguments) })
        }
    }
}

private typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32

/// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34+), which Swift's Glibc module
/// does not export.
private let addCloseFrom: AddCloseFrom? = {
    guard let symbol = dlsym(dlopen(nil, RTLD_NOW), "posix_spawn_file_actions_addclosefrom_np") else { return nil }
    return unsafeBitCast(symbol, to: AddCloseFrom.self)
}()

/// Without closefrom: sets FD_CLOEXEC on every descriptor above 2.
private func markOpenDescriptorsCloseOnExec() {
    for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? [] {
        guard let descriptor = Int32(name), descriptor > 2 else { continue }
        let flags = fcntl(descriptor, F_GETFD)
        if flags >= 0 { _ = fcntl(descriptor, F_SETFD, flags | FD_CLOEXEC) }
    }
}

/// A free loopback port: binds port 0, reads the port, releases it.
public func freeLoopbackPort() throws -> Int {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard descriptor >= 0 else { throw TestSupportError("socket() failed") }
    defer { close(descriptor) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { generic in
            bind(descriptor, generic, length) == 0 && getsockname(descriptor, generic, &length) == 0
        }
    }
    guard ok else { throw TestSupportError("cannot bind a loopback port") }
    return Int(UInt16(bigEndian: address.sin_port))
}

public struct TestSupportError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A child process started with `posix_spawn`: the tests' replacement for Foundation's
/// `Process`, whose `run()` on Linux crashed (a bad pointer inside it) while the suite launched
/// many children and held many descriptors, even one launch at a time. Its output goes to a
/// file (or nowhere); it is reaped by `isRunning`, `terminationStatus` and `waitForExit`.
public final class SpawnedProcess: Sendable {
    public let processIdentifier: pid_t
    /// The exit status once reaped (128 + signal for a signal).
    private let status = Mutex<Int32?>(nil)

    private init(pid: pid_t) {
        processIdentifier = pid
    }

    /// Starts `executable` with `arguments`, the given environment (this process's when nil), in
    /// `directory`, standard output to the file at `output` (appended; nowhere when nil) and
    /// standard error with it when `errorsToOutput`, else nowhere. Standard input is empty.
    public static func spawn(
        _ executable: URL, _ arguments: [String], environment: [String: String]? = nil, directory: URL? = nil, output: String? = nil,
        errorsToOutput: Bool = true
    ) throws -> SpawnedProcess {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        if let output {
            posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        } else {
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        }
        if errorsToOutput {
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        } else {
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        }
        if let directory {
            guard let addChdir else { throw TestSupportError("posix_spawn cannot change directory here") }
            _ = addChdir(&actions, directory.path)
        }
        let argv = ([executable.path] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        let variables = environment ?? ProcessInfo.processInfo.environment
        let envp = variables.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for pointer in envp { free(pointer) } }
        var pid: pid_t = 0
        let spawned = withLaunchLock { () -> Int32 in
            if let closeFrom = addCloseFrom {
                _ = closeFrom(&actions, 3)
            } else {
                markOpenDescriptorsCloseOnExec()
            }
            return posix_spawn(&pid, executable.path, &actions, nil, argv, envp)
        }
        guard spawned == 0 else { throw TestSupportError("cannot run \(executable.path): error \(spawned)") }
        return SpawnedProcess(pid: pid)
    }

    /// Reaps the child if it has exited; true while it runs.
    public var isRunning: Bool {
        status.withLock { status in
            guard status == nil else { return false }
            var raw: Int32 = 0
            let result = waitpid(processIdentifier, &raw, WNOHANG)
            if result == processIdentifier {
                status = (raw & 0x7f) == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
                return false
            }
            return result == 0
        }
    }

    /// The exit status; nil while it runs.
    public var terminationStatus: Int32? {
        _ = isRunning
        return status.withLock { $0 }
    }

    /// SIGTERM.
    public func terminate() {
        if isRunning { kill(processIdentifier, SIGTERM) }
    }

    /// Waits (polling, never blocking a thread) up to `timeout`; the exit status, or nil if it
    /// still runs.
    public func waitForExit(timeout: Duration) async -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while isRunning, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
        return terminationStatus
    }

    /// Waits, blocking the calling thread: for code that is not async.
    public func waitUntilExit() {
        while isRunning { usleep(10_000) }
    }
}

private typealias AddChdir = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32

/// glibc's `posix_spawn_file_actions_addchdir_np` (2.29+), which Swift's Glibc module does not export.
private let addChdir: AddChdir? = {
    guard let symbol = dlsym(dlopen(nil, RTLD_NOW), "posix_spawn_file_actions_addchdir_np") else { return nil }
    return unsafeBitCast(symbol, to: AddChdir.self)
}()
