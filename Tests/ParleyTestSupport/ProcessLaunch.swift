import Foundation

/// Runs `body` (a `posix_spawn`) while no other child is being launched in this test process:
/// a spawn marks the process's descriptors close-on-exec first where glibc lacks closefrom.
func withLaunchLock<T>(_ body: () throws -> T) rethrows -> T {
    launchLock.lock()
    defer { launchLock.unlock() }
    return try body()
}

private let launchLock = NSLock()
