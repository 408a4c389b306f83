import Foundation
import ParleyTestSupport
import Testing

/// Webhooks end to end (`Tests/webhooks`): a backend started by the Python suite fails first
/// attempts, answers slowly and restarts while `parley serve` (SQLite) is killed mid-delivery;
/// every event arrives at least once, in room order, with signatures that the documentation's
/// own PHP, Python and Node checks accept (and refuse when forged or replayed). Dead letters,
/// the publish hook, and with a real Redis and PostgreSQL, two instances sending each event once.
///
/// Needs Python's aiohttp and pytest, php-cli and node; skipped without them unless
/// `PARLEY_REQUIRE_WEBHOOKS=1` (set by `.ci/run`) makes their absence a failure.
@Suite("Webhooks to a flaky backend")
struct WebhookTests {
    static var required: Bool { ProcessInfo.processInfo.environment["PARLEY_REQUIRE_WEBHOOKS"] == "1" }
    static var toolsPresent: Bool {
        ["/usr/bin/php", "/usr/bin/node"].allSatisfy { FileManager.default.isExecutableFile(atPath: $0) }
            && pythonCanImport("aiohttp, pytest")
    }

    @Test("every event at least once, in room order, signed; dead letters; the publish hook; a cluster sends once", .enabled(if: required || toolsPresent))
    func pythonSuite() async throws {
        let result = try await runPythonSuite("Tests/webhooks")
        #expect(result.status == 0, "webhook suite failed:\n\(result.output)")
        #expect(result.output.contains(result.cluster ? "4 passed" : "3 passed"), "unexpected pytest summary:\n\(result.output)")
    }
}
