import Foundation
import GRPCCore
import ParleyGRPC
@testable import ParleyServer
import Testing

/// Conversations over real connections, in JWT mode: a third user has no way into a DM room by
/// any route, the other user hears of a DM (and a mention) on every session, whatever it joined,
/// and search never returns a message of a room the caller may not read.
@Suite("Direct messages, notifications and search")
struct DirectMessageTests {
    @Test("a third user cannot join, read, post to, watch or list a DM on the WebSocket, HTTP, SSE or gRPC")
    func thirdUserLockedOut() async throws {
        try await withJWTServer { server in
            let alice = try await TestClient.connect(port: server.port, query: "?token=\(try await Tokens.hs256(TestClaims(sub: "alice")))")
            let joined = try await alice.ack("dm", ["user": "bob"])
            #expect(joined["room"].string == "dm:alice:bob")
            try await alice.ack("message", ["room": "dm:alice:bob", "content": "just us"])

            let carolToken = try await Tokens.hs256(TestClaims(sub: "carol"))
            let carol = try await TestClient.connect(port: server.port, query: "?token=\(carolToken)")
            for (event, data) in [
                ("join", ["room": "dm:alice:bob", "since": 0]), ("message", ["room": "dm:alice:bob", "content": "hi"]),
                ("history", ["room": "dm:alice:bob"]), ("presence", ["room": "dm:alice:bob"]),
            ] as [(String, [String: Any])] {
                let reply = try await carol.request(event, data)
                #expect(reply["data"]["code"].string == "forbidden", "\(event): \(reply)")
            }
            expectError(try await http("GET", server.url("/api/rooms/dm:alice:bob/messages"), headers: bearer(carolToken)), 403, "forbidden")
            expectError(
                try await http("POST", server.url("/api/rooms/dm:alice:bob/messages"), body: #"{"content":"x"}"#, headers: bearer(carolToken)),
                403, "forbidden"
            )
            let rooms = try await http("GET", server.url("/api/rooms"), headers: bearer(carolToken))
            #expect(rooms.json["rooms"].array?.contains { $0["room"].string == "dm:alice:bob" } == false)
            #expect(try await SSEClient.open(port: server.port, path: "/rooms/dm:alice:bob/events?since=0&token=\(carolToken)").status == 403)
            try await withChatClient(port: server.grpcPort) { client in
                let metadata = grpcBearer(carolToken)
                #expect(await grpcStatus {
                    _ = try await client.getHistory(request: ClientRequest(message: .with { $0.roomID = "dm:alice:bob" }, metadata: metadata))
                } == .permissionDenied)
                let stream = EventStream.join(client, room: "dm:alice:bob", metadata: metadata)
                let ended = await stream.ended()
                #expect(ended??.code == .permissionDenied)
            }
            // Bob reads it by every route.
            let bobToken = try await Tokens.hs256(TestClaims(sub: "bob"))
            let page = try await http("GET", server.url("/api/rooms/dm:alice:bob/messages"), headers: bearer(bobToken))
            #expect(page.json["messages"].array?.compactMap { $0["content"].string } == ["just us"])
            #expect(try await http("GET", server.url("/api/rooms"), headers: bearer(bobToken)).json["rooms"].array?
                .contains { $0["room"].string == "dm:alice:bob" } == true)
        }
    }

    @Test("a DM and a mention reach every session of the user as notify events, on the WebSocket and gRPC Chat")
    func notifications() async throws {
        try await withJWTServer { server in
            let alice = try await TestClient.connect(port: server.port, query: "?token=\(try await Tokens.hs256(TestClaims(sub: "alice")))")
            let bobToken = try await Tokens.hs256(TestClaims(sub: "bob"))
            let phone = try await TestClient.connect(port: server.port, query: "?token=\(bobToken)")
            _ = try await phone.request("ping")
            try await withChatClient(port: server.grpcPort) { client in
                let laptop = EventStream.chat(client, metadata: grpcBearer(bobToken))
                laptop.send(.ping(.init()), requestID: "p")
                _ = try await laptop.reply(to: "p")

                try await alice.ack("dm", ["user": "bob"])
                try await alice.ack("message", ["room": "dm:alice:bob", "content": "psst"])
                let note = try await phone.expect("notify")
                #expect(note["kind"].string == "dm" && note["room"].string == "dm:alice:bob")
                #expect(note["message"]["content"].string == "psst" && note["message"]["user"].string == "alice")
                let overGRPC = try await laptop.expect { if case .notify = $0.event { true } else { false } }
                #expect(overGRPC.notify.kind == "dm" && overGRPC.notify.message.content == "psst")

                // A mention in a room bob never joined.
                try await alice.ack("join", ["room": "general"])
                try await alice.ack("message", ["room": "general", "content": "ask @bob about it"])
                let mention = try await phone.expect("notify")
                #expect(mention["kind"].string == "mention" && mention["room"].string == "general")
                let mentionOverGRPC = try await laptop.expect { if case .notify = $0.event { true } else { false } }
                #expect(mentionOverGRPC.notify.kind == "mention" && mentionOverGRPC.notify.message.roomID == "general")
                laptop.cancel()
            }
        }
    }

    @Test("search finds the caller's messages newest first and never one of a room it may not read (WebSocket, HTTP, gRPC)")
    func searchPermissions() async throws {
        try await withJWTServer { server in
            let root = try await Tokens.hs256(TestClaims(sub: "root"))
            for room in ["a", "b"] {
                _ = try await http("POST", server.url("/api/rooms/\(room)/messages"), body: #"{"content":"the secret plan for \#(room)"}"#, headers: bearer(root))
            }
            for (sender, partner) in [("bob", "carol"), ("bob", "alice")] {
                let client = try await TestClient.connect(port: server.port, query: "?token=\(try await Tokens.hs256(TestClaims(sub: sender)))")
                try await client.ack("dm", ["user": partner])
                try await client.ack("message", ["room": DirectRoomName.of(sender, partner), "content": "secret between \(sender) and \(partner)"])
            }
            let token = try await Tokens.hs256(TestClaims(sub: "alice", rooms: ["a", "dm:*"]))
            let alice = try await TestClient.connect(port: server.port, query: "?token=\(token)")
            let found = try await alice.ack("search", ["text": "SECRET"])
            #expect(found["messages"].array?.compactMap { $0["content"].string } == ["secret between bob and alice", "the secret plan for a"])
            let paged = try await alice.ack("search", ["text": "secret", "limit": 1])
            #expect(paged["hasMore"].bool == true)
            let next = try await alice.ack("search", ["text": "secret", "limit": 1, "before": paged["messages"][0]["id"].string ?? ""])
            #expect(next["messages"].array?.compactMap { $0["content"].string } == ["the secret plan for a"])
            #expect(try await alice.request("search", ["text": "  !! "])["data"]["code"].string == "bad_request")
            let overHTTP = try await http("GET", server.url("/api/search?q=secret"), headers: bearer(token))
            #expect(overHTTP.json["messages"].array?.count == 2)
            try await withChatClient(port: server.grpcPort) { client in
                let chat = EventStream.chat(client, metadata: grpcBearer(token))
                guard case .search(let results)? = try await chat.request(.search(.with { $0.text = "secret" }), id: "s") else {
                    throw TestFailure("no search result")
                }
                #expect(results.messages.map(\.content) == ["secret between bob and alice", "the secret plan for a"])
                chat.cancel()
            }
        }
    }
}

/// The DM room's name, as clients compute it.
enum DirectRoomName {
    static func of(_ a: String, _ b: String) -> String { a < b ? "dm:\(a):\(b)" : "dm:\(b):\(a)" }
}
