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
    let process = try SpawnedProcess.spawn(
        executable, arguments, environment: ProcessInfo.processInfo.environment.merging(environment) { $1 }, directory: directory,
        output: log.path, errorsToOutput: includeErrors
    )
    let status = await process.waitForExit(timeout: timeout)
    if status == nil {
        process.terminate()
        _ = await process.waitForExit(timeout: .seconds(5))
    }
    let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
    return (status, text)
}

/// Runs the pytest suite in the repository folder `suite` against the `parley` built for these
/// tests (`PARLEY_BIN`), with a Redis and a PostgreSQL for its cluster tests when they can be
/// started (`cluster` says whether they were), and `-rs` listing what it skipped.
func runPythonSuite(
    _ suite: String, environment extra: [String: String] = [:], timeout: Duration = .seconds(300)
) async throws -> (status: Int32?, output: String, cluster: Bool) {
    var environment = extra.merging(["PARLEY_BIN": ServerProcess.executable.path]) { $1 }
    let cluster = try await ClusterBackends.startForPython(&environment)
    defer { cluster?.stop() }
    let result = try await runToCompletion(
        URL(fileURLWithPath: "/usr/bin/env"), ["python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", suite],
        environment: environment, directory: BrowserTests.repository, timeout: timeout
    )
    return (result.status, result.output, cluster != nil)
}

/// Whether `python3 -c "import <modules>"` succeeds (modules comma-separated).
func pythonCanImport(_ modules: String) -> Bool {
    guard let probe = try? SpawnedProcess.spawn(URL(fileURLWithPath: "/usr/bin/env"), ["python3", "-c", "import \(modules)"]) else {
        return false
    }
    probe.waitUntilExit()
    return probe.terminationStatus == 0
}
