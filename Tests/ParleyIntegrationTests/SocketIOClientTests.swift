import Foundation
import ParleyTestSupport
import Testing

/// Socket.IO with clients Parley did not write (`Tests/socketio`): python-socketio over
/// polling, WebSocket and the upgrade, bad packets by hand, and the official socket.io-client
/// in headless Chromium, whose built-in recovery is tested across a server restart and, with a
/// real Redis and PostgreSQL, across a killed cluster instance.
///
/// Needs Python's python-socketio, aiohttp, selenium and pytest, Chromium, and socket.io.min.js
/// (`scripts/install-test-deps` fetches it); skipped without them unless
/// `PARLEY_REQUIRE_SOCKETIO=1` (set by `.ci/run`) makes their absence a failure.
@Suite("Socket.IO with the official and Python clients", .serialized)
struct SocketIOClientTests {
    static var required: Bool { ProcessInfo.processInfo.environment["PARLEY_REQUIRE_SOCKETIO"] == "1" }

    static var clientsAvailable: Bool {
        FileManager.default.fileExists(atPath: BrowserTests.repository.appendingPathComponent("Tests/socketio/.assets/socket.io.min.js").path)
            && BrowserTests.browserAvailable && pythonCanImport("socketio, aiohttp, selenium, pytest")
    }

    @Test("python-socketio and socket.io-client 4.8.1 chat, recover and are refused bad packets", .enabled(if: required || clientsAvailable))
    func pythonSuite() async throws {
        let result = try await runPythonSuite("Tests/socketio")
        #expect(result.status == 0, "Socket.IO suite failed:\n\(result.output)")
        if result.cluster {
            #expect(!result.output.contains("SKIPPED"), "a Socket.IO test was skipped:\n\(result.output)")
        }
    }
}
