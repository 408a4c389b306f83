import Foundation
import ParleyTestSupport

/// Runs a command to its end, or terminates it after `timeout` (status nil then). Its output
/// goes to a log file that is read back afterwards: no pipes, which Foundation on Linux handles
/// poorly when several children run at once. `includeErrors: false` drops standard error, for
/// a command whose standard output must parse.
func runToCompletion(
    _ executable: URL, _ arguments: [String], environment: [String: String] = [:], directory: URL? = nil,
    includeErrors: Bool = true, timeout: Duration
) async throws -> (status: Int32?, output: String) {
    let log = URL(fileURLWithPath: temporaryDirectory()).appendingPathComponent("output.log")
    _ = FileManager.default.createFile(atPath: log.path, contents: nil)
    let output = try FileHandle(forWritingTo: log)
    let process = Process()
    process.executableURL = executable
    process.arguments = arguments
    process.currentDirectoryURL = directory
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    process.standardOutput = output
    process.standardError = includeErrors ? output : FileHandle.nullDevice
    try launchProcess(process)
    try? output.close()
    let deadline = ContinuousClock.now + timeout
    while process.isRunning, ContinuousClock.now < deadline {
        try await Task.sleep(for: .milliseconds(100))
    }
    let timedOut = process.isRunning
    if timedOut { process.terminate() }
    let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
    return (timedOut ? nil : process.terminationStatus, text)
}

/// Whether `python3 -c "import <modules>"` succeeds (modules comma-separated).
func pythonCanImport(_ modules: String) -> Bool {
    let probe = Process()
    probe.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    probe.arguments = ["python3", "-c", "import \(modules)"]
    probe.standardError = FileHandle.nullDevice
    guard (try? launchProcess(probe)) != nil else { return false }
    probe.waitUntilExit()
    return probe.terminationStatus == 0
}
