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

    @Test("a client that ends its side of TCP without a close frame is closed at once, and its session released")
    func halfClose() async throws {
        let server = try await ServerProcess.start(["--data-dir", temporaryDirectory()])
        let socket = try await RawSocket.connect(port: server.port)
        try await socket.send(String(format: Self.upgrade, "halfclose"))
        try await socket.send(bytes: Self.frame(#"{"event":"join","data":{"room":"half"},"id":1}"#) + Self.frame(#"{"event":"ping","id":2}"#))
        var seen = ""
        while !seen.contains("pong"), let chunk = await socket.read(timeout: .seconds(10)) { seen += chunk }
        #expect(seen.contains("pong"))
        #expect(try await scrape(server)["parley_connections{transport=\"websocket\"}"] == 1)
        // FIN only: the server allows half-closed HTTP connections, but not this.
        try await socket.channel.close(mode: .output).get()
        // Well inside the ping interval (30 s), which would otherwise be what ends it.
        #expect(await socket.closedByServer(within: .seconds(5)))
        try await waitUntil(timeout: .seconds(5), every: .milliseconds(20)) {
            try await scrape(server)["parley_connections{transport=\"websocket\"}"] == 0
        }
        server.kill(SIGTERM)
        _ = await server.waitForExit(timeout: .seconds(10))
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
            // Every connection of the round is released on the server's side: none is left
            // open (a client's FIN must end it even when no close frame came first).
            try await waitUntil(timeout: .seconds(10), every: .milliseconds(50)) {
                try await scrape(server)["parley_connections{transport=\"websocket\"}"] == 0
            }
            resident.append(try #require(server.anonymousKiB))
        }
        // The first rounds warm up allocator arenas; over the last half (2,000 connections)
        // a leak of even 2 KiB per connection would show as 4,000 KiB. Anonymous memory:
        // the executable's own pages, brought in as new code runs, are not a leak.
        let growth = resident[rounds - 1] - resident[rounds / 2 - 1]
        #expect(growth < 4_000, "resident anonymous KiB per round: \(resident)")
        server.kill(SIGTERM)
        _ = await server.waitForExit(timeout: .seconds(10))
    }
}
