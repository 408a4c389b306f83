import Foundation

/// Starts `process`, one launch at a time in this test process. Foundation's `Process.run()` on
/// Linux crashed (a segmentation fault inside it) when several suites launched children at
/// the same moment: the Python suites, redis-server and PostgreSQL start in parallel tests.
public func launchProcess(_ process: Process) throws {
    try withLaunchLock { try process.run() }
}

/// Runs `body` (a `posix_spawn`, a `Process.run()`) while no other child is being launched.
func withLaunchLock<T>(_ body: () throws -> T) rethrows -> T {
    launchLock.lock()
    defer { launchLock.unlock() }
    return try body()
}

private let launchLock = NSLock()
