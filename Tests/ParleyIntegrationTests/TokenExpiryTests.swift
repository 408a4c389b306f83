import Foundation
import ParleyCore
@testable import ParleyServer
import Testing

/// Tokens that run out on live connections. The server runs on a `ManualClock`, and tokens are
/// minted on its time; a test moves it past a token's expiry and past the refresh grace
/// instead of waiting, so a loaded machine cannot make a refresh come too late.
@Suite("Token expiry on live connections")
struct TokenExpiryTests {
    /// Tokens here last a minute; the grace is 30 s.
    static let lifetime: Double = 60
    static let grace: Duration = .seconds(30)

    /// The manual clock's start, which tokens count from.
    static let start = Timestamp(milliseconds: 1_800_000_000_000)

    /// A token for `sub` that expires `expiresIn` seconds after the clock's start.
    static func token(_ sub: String, expiresIn: Double = 3600) async throws -> String {
        try await Tokens.hs256(TestClaims(sub: sub, expiresIn: expiresIn, now: Double(start.milliseconds / 1000)))
    }

    func withExpiringServer(_ body: (TestServer, ManualClock) async throws -> Void) async throws {
        let clock = ManualClock(now: Self.start)
        try await withJWTServer({
            $0.auth.leewaySeconds = 0
            $0.tokenRefreshGrace = Self.grace
            $0.clock = clock
        }) { server in try await body(server, clock) }
    }

    /// The unsolicited `error` (no id) the server sends when the token expires.
    func expectExpiryError(_ client: TestClient) async throws {
        let error = try await client.expect("error")
        #expect(error["code"].string == "unauthorized")
        #expect(error["message"].string?.contains("expired") == true)
    }

    @Test("an expired token gets error unauthorized, then the socket is closed with 1008")
    func expiryCloses() async throws {
        try await withExpiringServer { server, clock in
            let token = try await Self.token("alice", expiresIn: Self.lifetime)
            let client = try await TestClient.connect(port: server.port, query: "?token=\(token)")
            try await client.ack("join", ["room": "r"])
            clock.advance(by: .seconds(Self.lifetime + 1))
            try await expectExpiryError(client)
            // Not before the grace is over.
            clock.advance(by: Self.grace - .seconds(2))
            #expect(try await client.request("ping")["event"].string == "pong")
            clock.advance(by: .seconds(1))
            #expect(await client.closed() == 1008)
            // The server serves others; alice's session is gone from the room.
            let bob = try await Self.token("bob")
            let other = try await TestClient.connect(port: server.port, query: "?token=\(bob)")
            let presence = try await other.ack("presence", ["room": "r"])
            #expect(presence["users"].array?.isEmpty == true)
        }
    }

    @Test("connect with a fresh token for the same user keeps the socket open")
    func refreshKeepsOpen() async throws {
        try await withExpiringServer { server, clock in
            let token = try await Self.token("alice", expiresIn: Self.lifetime)
            let client = try await TestClient.connect(port: server.port, query: "?token=\(token)")
            try await client.ack("join", ["room": "r"])
            clock.advance(by: .seconds(Self.lifetime + 1))
            try await expectExpiryError(client)
            let fresh = try await Self.token("alice")
            #expect(try await client.ack("connect", ["token": fresh])["user"].string == "alice")
            // Well past the grace the socket still works, and is still in its room.
            clock.advance(by: Self.grace * 2)
            try await client.ack("message", ["room": "r", "content": "still here"])
            #expect(try await client.expect("message")["content"].string == "still here")
        }
    }

    @Test("during the refresh grace an expired token is served nothing but connect and ping")
    func graceServesOnlyConnect() async throws {
        try await withExpiringServer { server, clock in
            let token = try await Self.token("alice", expiresIn: Self.lifetime)
            let client = try await TestClient.connect(port: server.port, query: "?token=\(token)")
            try await client.ack("join", ["room": "r"])
            clock.advance(by: .seconds(Self.lifetime + 1))
            try await expectExpiryError(client)
            for (event, data) in [("message", ["room": "r", "content": "on an expired token"]), ("history", ["room": "r"]),
                                  ("presence", ["room": "r"]), ("typing", ["room": "r", "typing": true]), ("read", ["room": "r", "seq": 1]),
                                  ("join", ["room": "r2"])] as [(String, [String: Any])] {
                let refused = try await client.request(event, data)
                #expect(refused["data"]["code"].string == "unauthorized", "\(event): \(refused)")
            }
            #expect(try await client.request("ping")["event"].string == "pong")
            let fresh = try await Self.token("alice")
            #expect(try await client.ack("connect", ["token": fresh])["user"].string == "alice")
            try await client.ack("message", ["room": "r", "content": "served again"])
            let history = try await client.ack("history", ["room": "r"])
            #expect(history["messages"].array?.compactMap { $0["content"].string } == ["served again"])
        }
    }

    @Test("a refresh with another user's token is forbidden, and the socket still closes")
    func refreshAsAnotherUser() async throws {
        try await withExpiringServer { server, clock in
            let token = try await Self.token("alice", expiresIn: Self.lifetime)
            let client = try await TestClient.connect(port: server.port, query: "?token=\(token)")
            let bob = try await Self.token("bob")
            #expect(try await client.request("connect", ["token": bob])["data"]["code"].string == "forbidden")
            clock.advance(by: .seconds(Self.lifetime + 1))
            try await expectExpiryError(client)
            clock.advance(by: Self.grace)
            #expect(await client.closed() == 1008)
        }
    }

    @Test("a refresh with a narrower rooms claim leaves the rooms no longer allowed")
    func refreshNarrowsRooms() async throws {
        try await withJWTServer { server in
            let token = try await Tokens.hs256(TestClaims(sub: "alice"))
            let client = try await TestClient.connect(port: server.port, query: "?token=\(token)")
            try await client.ack("join", ["room": "a"])
            try await client.ack("join", ["room": "b"])
            try await client.ack("connect", ["token": try await Tokens.hs256(TestClaims(sub: "alice", rooms: ["a"]))])
            #expect(try await client.request("leave", ["room": "b"])["data"]["code"].string == "not_found")
            try await client.ack("leave", ["room": "a"])
        }
    }

    @Test("an SSE stream ends with an error event when its token expires")
    func sseEndsAtExpiry() async throws {
        try await withExpiringServer { server, clock in
            let token = try await Self.token("alice", expiresIn: Self.lifetime)
            let sse = try await SSEClient.open(port: server.port, path: "/rooms/r/events?token=\(token)")
            #expect(sse.status == 200)
            // Before or after the stream's session opened, either way it is told and ended.
            clock.advance(by: .seconds(Self.lifetime + 1))
            let error = try await sse.expect("error")
            #expect(error.json["code"].string == "unauthorized")
            var ended = false
            for _ in 0..<100 where await sse.next(timeout: .seconds(10)) == nil {
                ended = true
                break
            }
            #expect(ended)
        }
    }
}
