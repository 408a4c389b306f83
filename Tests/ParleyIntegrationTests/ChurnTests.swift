import Foundation
import ParleyTestSupport
import Testing

/// Clients that connect, talk and leave all day (phones, reconnect loops) must not grow the
/// server: memory levels off instead of growing with the number of connections ever made.
@Suite("Connection churn")
struct ChurnTests {
    static let upgrade = "GET /ws?user=%@ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"

    /// A masked client text frame.
    static func frame(_ text: String) -> [UInt8] {
        let payload = Array(text.utf8)
        precondition(payload.count < 126)
        let mask: [UInt8] = [0x11, 0x22, 0x33, 0x44]
        return [0x81, 0x80 | UInt8(payload.count)] + mask + payload.enumerated().map { $0.element ^ mask[$0.offset % 4] }
    }

    /// Connects, joins, pings, waits for the pong, then leaves cleanly or drops.
    static func visit(port: Int, index: Int) async throws {
        let socket = try await RawSocket.connect(port: port)
        try await socket.send(String(format: upgrade, "u\(index % 50)"))
        try await socket.send(bytes: frame(#"{"event":"join","data":{"room":"r\#(index % 10)"},"id":1}"#) + frame(#"{"event":"ping","id":2}"#))
        var seen = ""
        while !seen.contains("pong"), let chunk = await socket.read(timeout: .seconds(10)) { seen += chunk }
        if index % 2 == 0 { try? await socket.send(bytes: [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8]) }
        await socket.close()
    }

    @Test("rounds of connect, join, ping and close (clean or abrupt) leave the server's memory level", .timeLimit(.minutes(3)))
    func churn() async throws {
        try await withHeavyTestLock { try await runChurn() }
    }

    private func runChurn() async throws {
        let server = try await ServerProcess.start(["--data-dir", temporaryDirectory()])
        let rounds = 10, perRound = 400
        var resident: [Int] = []
        for round in 0..<rounds {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<perRound {
                    if index >= 50 { try await group.next() }
                    group.addTask { try await Self.visit(port: server.port, index: round * perRound + index) }
                }
                try await group.waitForAll()
            }
            // Closes finish on the server's side shortly after the clients'.
            try await Task.sleep(for: .milliseconds(300))
            resident.append(try #require(server.residentKiB))
        }
        // The first rounds warm up allocator arenas; over the last half (2,000 connections)
        // a leak of even 2 KiB per connection would show as 4,000 KiB.
        let growth = resident[rounds - 1] - resident[rounds / 2 - 1]
        #expect(growth < 4_000, "resident KiB per round: \(resident)")
        server.kill(SIGTERM)
        _ = await server.waitForExit(timeout: .seconds(10))
    }
}
