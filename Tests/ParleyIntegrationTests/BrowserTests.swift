import Foundation
import ParleyTestSupport
import Testing

/// The web client in real headless Chromium: runs the Selenium suite in `Tests/browser`
/// against the `parley` executable built for these tests.
///
/// It needs Debian's `chromium` and `chromium-driver` and Python's `selenium` (`.ci/run`
/// installs them). Without them it is skipped, unless `PARLEY_REQUIRE_BROWSER=1` (set by
/// `.ci/run`) makes their absence a failure.
@Suite("Web client in a real browser")
struct BrowserTests {
    static let repository = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static var required: Bool { ProcessInfo.processInfo.environment["PARLEY_REQUIRE_BROWSER"] == "1" }

    @Test("two people chat, survive a server restart, and see markup as text", .enabled(if: required || browserAvailable))
    func seleniumSuite() async throws {
        // With a Redis and a PostgreSQL, the call test puts its two browsers on two instances.
        let result = try await runPythonSuite("Tests/browser", environment: ["PARLEY_SCREENSHOT_DIR": NSTemporaryDirectory()])
        #expect(result.status == 0, "browser suite failed:\n\(result.output)")
    }

    static var browserAvailable: Bool {
        let paths = ["/usr/bin/chromium", "/usr/bin/chromedriver"]
        return paths.allSatisfy(FileManager.default.isExecutableFile(atPath:)) && pythonCanImport("selenium, pytest")
    }
}
