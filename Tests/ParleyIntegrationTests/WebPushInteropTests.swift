import Foundation
import ParleyTestSupport
import Testing

/// Web Push end to end (`Tests/webpush`): a push service started by the Python suite receives
/// what `parley serve` sends to subscriptions made the way browsers make them; `http_ece` (an
/// RFC 8291 implementation Parley did not write) decrypts it, the VAPID JWT is verified, 410
/// drops a subscription, 503 and 429 are retried; with a real Redis and PostgreSQL, two
/// instances push each event once and see each other's visible sessions.
///
/// Needs Python's http_ece, cryptography, aiohttp and pytest; skipped without them unless
/// `PARLEY_REQUIRE_WEBPUSH=1` (set by `.ci/run`) makes their absence a failure.
@Suite("Web Push with an independent RFC 8291 implementation")
struct WebPushInteropTests {
    static var required: Bool { ProcessInfo.processInfo.environment["PARLEY_REQUIRE_WEBPUSH"] == "1" }

    @Test("DMs, mentions and calls reach a closed browser, gone subscriptions are dropped, a cluster pushes once", .enabled(if: required || pythonCanImport("http_ece, cryptography, aiohttp, pytest")))
    func pythonSuite() async throws {
        let result = try await runPythonSuite("Tests/webpush")
        #expect(result.status == 0, "Web Push suite failed:\n\(result.output)")
        #expect(result.output.contains(result.cluster ? "3 passed" : "2 passed"), "unexpected pytest summary:\n\(result.output)")
    }
}
