import Foundation
@testable import ParleyServer
import Testing

@Suite("Abuse limits")
struct LimitTests {
    @Test("one user's publish rate is limited across all of their connections; others are not slowed")
    func perUserRate() async throws {
        try await withServer({
            $0.limits.ratePerSecond = 100
            $0.limits.rateBurst = 100
            $0.limits.userRatePerSecond = 0.1
            $0.limits.userRateBurst = 3
        }) { server in
            let first = try await TestClient.connect(port: server.port, user: "alice")
            let second = try await TestClient.connect(port: server.port, user: "alice")
            try await first.ack("message", ["room": "r", "content": "1"])
            try await second.ack("message", ["room": "r", "content": "2"])
            try await first.ack("message", ["room": "r", "content": "3"])
            let refused = try await second.request("message", ["room": "r", "content": "4"])
            #expect(refused["data"]["code"].string == "rate_limited")
            #expect((refused["data"]["retryAfterMs"].int ?? 0) > 0)
            expectError(try await http("POST", server.url("/api/rooms/r/messages"), body: #"{"content":"5","user":"alice"}"#), 429, "rate_limited")
            let bob = try await TestClient.connect(port: server.port, user: "bob")
            try await bob.ack("message", ["room": "r", "content": "bob is fine"])
            #expect(try await bob.ack("history", ["room": "r"])["messages"].array?.count == 4)
        }
    }

    @Test("connections per IP: one more is refused (429 and error JSON); existing ones keep working")
    func connectionsPerIP() async throws {
        try await withServer({ $0.limits.maxConnectionsPerIP = 2 }) { server in
            let first = try await TestClient.connect(port: server.port, user: "a")
            let sse = try await SSEClient.open(port: server.port, path: "/rooms/r/events?user=b")
            #expect(sse.status == 200)
            try await expectUpgradeRefused(server, "?user=c", status: 429, code: "rate_limited")
            expectError(try await http("GET", server.url("/rooms/r/events?user=d")), 429, "rate_limited")
            #expect(try await first.request("ping")["event"].string == "pong")
            // The HTTP API is not a long-lived connection and is not counted.
            #expect(try await http("GET", server.url("/api/rooms")).status == 200)
            // A closed connection gives its place back.
            first.close()
            #expect(await first.closed() != nil)
            var reconnected: TestClient?
            for _ in 0..<100 where reconnected == nil {
                reconnected = try? await TestClient.connect(port: server.port, user: "e")
                if reconnected == nil { try await Task.sleep(for: .milliseconds(50)) }
            }
            #expect(try await reconnected?.request("ping")["event"].string == "pong")
        }
    }

    @Test("connections in total: one more is refused (503 and error JSON)")
    func connectionsTotal() async throws {
        try await withServer({ $0.limits.maxConnections = 1 }) { server in
            let first = try await TestClient.connect(port: server.port, user: "a")
            try await expectUpgradeRefused(server, "?user=b", status: 503, code: "unavailable")
            expectError(try await http("GET", server.url("/rooms/r/events?user=c")), 503, "unavailable")
            #expect(try await first.request("ping")["event"].string == "pong")
            #expect(try await http("POST", server.url("/api/rooms/r/messages"), body: #"{"content":"x","user":"z"}"#).status == 201)
        }
    }

    @Test("a WebSocket from a disallowed Origin is refused (403) before the upgrade")
    func disallowedOrigin() async throws {
        try await withServer({ $0.allowedOrigins = ["https://chat.example.com"] }) { server in
            try await expectUpgradeRefused(server, "?user=a", origin: "https://evil.example.com", status: 403, code: "forbidden")
            let good = try await rawHTTP(port: server.port, .GET, "/ws?user=a", headers: upgradeHeaders(origin: "https://chat.example.com"))
            #expect(good.status == 101)
            let noOrigin = try await rawHTTP(port: server.port, .GET, "/ws?user=a", headers: upgradeHeaders())
            #expect(noOrigin.status == 101)
        }
        // Open mode, no list: only the server's own pages (anyone may claim any user there).
        try await withServer { server in
            try await expectUpgradeRefused(server, "?user=a", origin: "https://evil.example.com", status: 403, code: "forbidden")
            try await expectUpgradeRefused(server, "?user=a", origin: "http://localhost:3000", status: 403, code: "forbidden")
            let own = try await rawHTTP(port: server.port, .GET, "/ws?user=a", headers: upgradeHeaders(origin: "http://127.0.0.1"))
            #expect(own.status == 101)
            let noOrigin = try await rawHTTP(port: server.port, .GET, "/ws?user=a", headers: upgradeHeaders())
            #expect(noOrigin.status == 101)
        }
        // JWT mode, no list: any page, since a page needs a token to be anyone.
        try await withJWTServer { server in
            let token = try await Tokens.hs256(TestClaims(sub: "alice"))
            let any = try await rawHTTP(port: server.port, .GET, "/ws?token=\(token)", headers: upgradeHeaders(origin: "https://evil.example.com"))
            #expect(any.status == 101)
        }
    }

    @Test("a page of another site cannot post (form or no-cors fetch); non-browsers and the server's own pages can; the web client is framed by no one")
    func crossSitePosts() async throws {
        try await withServer({ $0.corsOrigins = ["https://app.example.com"] }) { server in
            let body = #"{"content":"forged","user":"victim"}"#
            for contentType in ["text/plain", "application/x-www-form-urlencoded", "application/json"] {
                let forged = try await rawHTTP(port: server.port, .POST, "/api/rooms/r/messages",
                    headers: [("Origin", "https://evil.example.com"), ("Content-Type", contentType)], body: body)
                #expect(forged.status == 403, "\(contentType)")
                #expect(forged.json["error"]["code"].string == "forbidden")
            }
            let own = try await rawHTTP(port: server.port, .POST, "/api/rooms/r/messages", headers: [("Origin", "http://127.0.0.1")], body: body)
            #expect(own.status == 201)
            let listed = try await rawHTTP(port: server.port, .POST, "/api/rooms/r/messages", headers: [("Origin", "https://app.example.com")], body: body)
            #expect(listed.status == 201)
            #expect(try await http("POST", server.url("/api/rooms/r/messages"), body: body).status == 201)
            #expect(try await http("GET", server.url("/api/rooms/r/messages")).json["messages"].array?.count == 3)

            let page = try await rawHTTP(port: server.port, .GET, "/")
            let csp = page.headers["Content-Security-Policy"].first ?? ""
            #expect(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"), "\(csp)")
            #expect(page.headers["X-Content-Type-Options"].first == "nosniff")
            #expect(try await http("GET", server.url("/api/rooms")).headers["x-content-type-options"] == "nosniff")
        }
    }

    @Test("CORS: preflight answered for allowed origins, headers on answers and errors, nothing for others")
    func cors() async throws {
        try await withServer({ $0.corsOrigins = ["https://app.example.com"] }) { server in
            let preflight = try await rawHTTP(port: server.port, .OPTIONS, "/api/rooms/r/messages", headers: [
                ("Origin", "https://app.example.com"), ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "authorization, content-type"),
            ])
            #expect(preflight.status == 204)
            #expect(preflight.headers["Access-Control-Allow-Origin"].first == "https://app.example.com")
            #expect(preflight.headers["Access-Control-Allow-Headers"].first?.contains("Authorization") == true)
            let get = try await http("GET", server.url("/api/rooms"), headers: ["Origin": "https://app.example.com"])
            #expect(get.headers["access-control-allow-origin"] == "https://app.example.com")
            let error = try await http("GET", server.url("/api/rooms/bad%20room/messages"), headers: ["Origin": "https://app.example.com"])
            #expect(error.status == 400)
            #expect(error.headers["access-control-allow-origin"] == "https://app.example.com")
            let other = try await http("GET", server.url("/api/rooms"), headers: ["Origin": "https://evil.example.com"])
            #expect(other.headers["access-control-allow-origin"] == nil)
        }
    }

    @Test("an HTTP body over the limit is 413 too_large and stores nothing")
    func bodyTooLarge() async throws {
        try await withServer({ $0.limits.maxFrameBytes = 2048 }) { server in
            let content = String(repeating: "x", count: 4000)
            expectError(try await http("POST", server.url("/api/rooms/r/messages"), body: #"{"content":"\#(content)","user":"a"}"#), 413, "too_large")
            #expect(try await http("GET", server.url("/api/rooms/r/messages")).json["messages"].array?.isEmpty == true)
        }
    }
}
