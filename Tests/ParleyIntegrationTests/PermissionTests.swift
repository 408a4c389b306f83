import Foundation
import ParleyAuth
@testable import ParleyServer
import Testing

@Suite("Permissions: rooms claim, posting as others, API keys")
struct PermissionTests {
    static let apiKey = "backend-key-0123456789abcdef0123456789"

    @Test("a token for rooms a and team-* may not join, post to, read or watch room b over the WebSocket")
    func roomsClaimWebSocket() async throws {
        try await withJWTServer { server in
            let token = try await Tokens.hs256(TestClaims(sub: "alice", rooms: ["a", "team-*"]))
            let client = try await TestClient.connect(port: server.port, query: "?token=\(token)")
            try await client.ack("join", ["room": "a"])
            try await client.ack("join", ["room": "team-red"])
            try await client.ack("message", ["room": "team-blue", "content": "allowed by the pattern"])
            for (event, data) in [
                ("join", ["room": "b"]), ("message", ["room": "b", "content": "x"]), ("history", ["room": "b"]),
                ("presence", ["room": "b"]), ("join", ["room": "team"]), ("join", ["room": "xa"]),
            ] as [(String, [String: Any])] {
                let reply = try await client.request(event, data)
                #expect(reply["data"]["code"].string == "forbidden", "\(event) \(data) -> \(reply)")
            }
            // Nothing reached room b.
            let reader = try await TestClient.connect(port: server.port, query: "?token=\(try await Tokens.hs256(TestClaims(sub: "root")))")
            #expect(try await reader.ack("history", ["room": "b"])["messages"].array?.isEmpty == true)
            // Looking a user up shows only the rooms the token allows.
            try await reader.ack("join", ["room": "b"])
            try await reader.ack("join", ["room": "a"])
            let root = try await http("GET", server.url("/api/users/root"), headers: bearer(token))
            #expect(root.json["rooms"].array?.compactMap(\.string) == ["a"])
        }
    }

    @Test("a token for room a may not post to, read or list room b over HTTP, nor stream it over SSE")
    func roomsClaimHTTPAndSSE() async throws {
        try await withJWTServer { server in
            let root = try await Tokens.hs256(TestClaims(sub: "root"))
            _ = try await http("POST", server.url("/api/rooms/b/messages"), body: #"{"content":"secret"}"#, headers: bearer(root))
            _ = try await http("POST", server.url("/api/rooms/a/messages"), body: #"{"content":"public"}"#, headers: bearer(root))
            let token = try await Tokens.hs256(TestClaims(sub: "alice", rooms: ["a"]))
            #expect(try await http("POST", server.url("/api/rooms/a/messages"), body: #"{"content":"ok"}"#, headers: bearer(token)).status == 201)
            expectError(try await http("POST", server.url("/api/rooms/b/messages"), body: #"{"content":"x"}"#, headers: bearer(token)), 403, "forbidden")
            expectError(try await http("GET", server.url("/api/rooms/b/messages"), headers: bearer(token)), 403, "forbidden")
            expectError(try await http("GET", server.url("/api/rooms/b/presence"), headers: bearer(token)), 403, "forbidden")
            let rooms = try await http("GET", server.url("/api/rooms"), headers: bearer(token))
            #expect(rooms.json["rooms"].array?.compactMap { $0["room"].string } == ["a"])
            let refused = try await SSEClient.open(port: server.port, path: "/rooms/b/events?since=0&token=\(token)")
            #expect(refused.status == 403)
            let allowed = try await SSEClient.open(port: server.port, path: "/rooms/a/events?since=0&token=\(token)")
            #expect(allowed.status == 200)
            #expect(try await allowed.expect("message").json["content"].string == "public")
        }
    }

    @Test("a user token may not post as another user")
    func postAsAnotherUser() async throws {
        try await withJWTServer { server in
            let token = try await Tokens.hs256(TestClaims(sub: "alice"))
            expectError(try await http("POST", server.url("/api/rooms/r/messages"), body: #"{"content":"x","user":"bob"}"#, headers: bearer(token)), 403, "forbidden")
            let own = try await http("POST", server.url("/api/rooms/r/messages"), body: #"{"content":"x","user":"alice"}"#, headers: bearer(token))
            #expect(own.status == 201)
            let page = try await http("GET", server.url("/api/rooms/r/messages"), headers: bearer(token))
            #expect(page.json["messages"].array?.compactMap { $0["user"].string } == ["alice"])
        }
    }

    @Test("an API key posts as the user it names and reads any room; misuse is answered with the spec'd error")
    func apiKey() async throws {
        try await withJWTServer({ $0.auth.apiKeys = ["first-key-that-is-long-enough", Self.apiKey] }) { server in
            let key = bearer(Self.apiKey)
            let posted = try await http("POST", server.url("/api/rooms/b/messages"), body: #"{"content":"deploy done","user":"ci-bot"}"#, headers: key)
            #expect(posted.status == 201)
            #expect(posted.json["user"].string == "ci-bot")
            #expect(try await http("GET", server.url("/api/rooms/b/messages"), headers: key).json["messages"].array?.count == 1)
            #expect(try await http("GET", server.url("/api/rooms"), headers: key).status == 200)
            // Without `user`, with an invalid one, with a wrong key, with a lower-cased scheme.
            expectError(try await http("POST", server.url("/api/rooms/b/messages"), body: #"{"content":"x"}"#, headers: key), 400, "bad_request")
            expectError(try await http("POST", server.url("/api/rooms/b/messages"), body: #"{"content":"x","user":"no way"}"#, headers: key), 400, "bad_request")
            expectError(try await http("POST", server.url("/api/rooms/b/messages"), body: #"{"content":"x","user":"u"}"#, headers: bearer(Self.apiKey + "x")), 401, "unauthorized")
            expectError(try await http("GET", server.url("/api/rooms"), headers: bearer(String(Self.apiKey.dropLast()))), 401, "unauthorized")
            #expect(try await http("GET", server.url("/api/rooms"), headers: ["Authorization": "bearer \(Self.apiKey)"]).status == 200)
            // An API key is not a way to become a user on a WebSocket or an SSE stream.
            try await expectUpgradeRefused(server, "?token=\(Self.apiKey)&user=alice", status: 403, code: "forbidden")
            let client = try await TestClient.connect(port: server.port)
            #expect(try await client.request("connect", ["token": Self.apiKey, "user": "alice"])["data"]["code"].string == "forbidden")
            #expect(try await client.request("join", ["room": "b"])["data"]["code"].string == "unauthorized")
            // Only one message was ever stored.
            #expect(try await http("GET", server.url("/api/rooms/b/messages"), headers: key).json["messages"].array?.count == 1)
            // On SSE an API key follows a room as a watcher: events, but no one's presence.
            let watcher = try await SSEClient.open(port: server.port, path: "/rooms/b/events?user=alice&since=0", headers: key)
            #expect(watcher.status == 200)
            #expect(try await watcher.expect("message").json["user"].string == "ci-bot")
            #expect(try await http("GET", server.url("/api/rooms/b/presence"), headers: key).json["users"].array?.isEmpty == true)
            watcher.close()
        }
    }

    @Test("open mode with API keys: a wrong key is unauthorized, no key still claims a user")
    func openModeWithAPIKeys() async throws {
        try await withServer({ $0.auth.apiKeys = [Self.apiKey] }) { server in
            expectError(try await http("POST", server.url("/api/rooms/r/messages"), body: #"{"content":"x","user":"u"}"#, headers: bearer("wrong")), 401, "unauthorized")
            #expect(try await http("POST", server.url("/api/rooms/r/messages"), body: #"{"content":"x","user":"u"}"#, headers: bearer(Self.apiKey)).status == 201)
            #expect(try await http("POST", server.url("/api/rooms/r/messages"), body: #"{"content":"x","user":"u"}"#).status == 201)
        }
    }
}

@Suite("API key comparison")
struct APIKeyTests {
    @Test("only an exact key matches, among several; none configured matches nothing")
    func matching() {
        let keys = APIKeys(["first-key", "second-key"])
        #expect(keys.matches("first-key"))
        #expect(keys.matches("second-key"))
        #expect(!keys.matches("second-ke"))
        #expect(!keys.matches("second-key "))
        #expect(!keys.matches(""))
        #expect(!APIKeys([]).matches(""))
    }
}
