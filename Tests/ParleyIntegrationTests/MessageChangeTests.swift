import Foundation
import GRPCCore
import ParleyGRPC
@testable import ParleyServer
import Testing

/// Edits, deletions, reactions and replies over real connections, on the default SQLite store:
/// each change is a room event in seq order on every transport, a member that was away gets the
/// changes it missed on resume, and a deleted message's content is gone from every route.
@Suite("Edits, deletions, reactions and replies")
struct MessageChangeTests {
    @Test("a change made on any transport reaches WebSocket, SSE and gRPC members in order, and a resume replays it")
    func changesOnEveryTransport() async throws {
        try await withServer { server in
            let alice = try await TestClient.connect(port: server.port, user: "alice")
            let bob = try await TestClient.connect(port: server.port, user: "bob")
            try await alice.ack("join", ["room": "r"])
            try await bob.ack("join", ["room": "r"])
            let sse = try await SSEClient.open(port: server.port, path: "/rooms/r/events?since=0&user=carol")
            let original = try await alice.ack("message", ["room": "r", "content": "helo @bob"])
            let id = try #require(original["id"].string)
            _ = try await alice.expect("message")
            #expect(original["mentions"].array?.compactMap(\.string) == ["bob"])
            _ = try await bob.expect("message")

            // Bob goes away; the message changes meanwhile, by WebSocket, HTTP and gRPC.
            bob.close()
            let edited = try await alice.ack("edit", ["room": "r", "id": id, "content": "hello @bob"])
            #expect(edited["seq"].number == 1 && edited["content"].string == "hello @bob" && edited["edited"].string != nil)
            let reacted = try await http(
                "POST", server.url("/api/rooms/r/messages/\(id)/reactions"), body: #"{"emoji":"👍","user":"carol"}"#
            )
            #expect(reacted.status == 200 && reacted.json["reactions"][0]["users"].array?.compactMap(\.string) == ["carol"])
            try await withChatClient(port: server.grpcPort) { client in
                let react = Chat_V1_ChatMessage.with {
                    $0.roomID = "r"
                    $0.senderID = "dave"
                    $0.kind = .react
                    $0.targetID = id
                    $0.content = "🎉"
                }
                let ack = try await client.sendMessage(react)
                #expect(ack.message.reactions.map(\.emoji) == ["👍", "🎉"] && !ack.duplicate)
                // The same reaction again changes nothing.
                #expect(try await client.sendMessage(react).duplicate)
            }
            let reply = try await alice.ack("message", ["room": "r", "content": "see above", "replyTo": id])
            #expect(reply["replyTo"].string == id && reply["quote"]["content"].string == "hello @bob" && reply["quote"]["user"].string == "alice")
            // Alice saw each change live, in order.
            var kinds: [String] = []
            for _ in 0..<3 { kinds.append(try await alice.expect("message")["kind"].string ?? "message") }
            #expect(kinds == ["edit", "react", "react"])

            // Bob resumes from seq 1: the three changes and the reply, in order.
            let back = try await TestClient.connect(port: server.port, user: "bob")
            try await back.ack("join", ["room": "r", "since": 1])
            var replay: [JSON] = []
            for _ in 0..<4 { replay.append(try await back.expect("message")) }
            #expect(replay.map { $0["seq"].number } == [2, 3, 4, 5])
            #expect(replay.map { $0["kind"].string ?? "message" } == ["edit", "react", "react", "message"])
            #expect(replay[0]["target"].string == id && replay[0]["content"].string == "hello @bob")
            #expect(replay[1]["user"].string == "carol" && replay[1]["content"].string == "👍")

            // SSE (carol, since 0) has every row too.
            var streamed: [String] = []
            for _ in 0..<5 {
                let event = try await sse.expect("message")
                streamed.append(try JSON.parse(event.data)["kind"].string ?? "message")
            }
            #expect(streamed == ["message", "edit", "react", "react", "message"])
            sse.close()

            // History shows the message as it is now.
            let page = try await http("GET", server.url("/api/rooms/r/messages?user=bob"))
            let first = page.json["messages"][0]
            #expect(first["content"].string == "hello @bob" && first["edited"].string != nil)
            #expect(first["reactions"].array?.compactMap { $0["emoji"].string } == ["👍", "🎉"])

            // Errors: another's edit, an unknown message, a bad emoji.
            let stranger = try await back.request("edit", ["room": "r", "id": id, "content": "mine"])
            #expect(stranger["data"]["code"].string == "forbidden")
            let unknown = try await back.request("react", ["room": "r", "id": "01UNKNOWNMESSAGE", "emoji": "👍"])
            #expect(unknown["data"]["code"].string == "not_found")
            let badEmoji = try await back.request("react", ["room": "r", "id": id, "emoji": "no spaces"])
            #expect(badEmoji["data"]["code"].string == "bad_request")
            expectError(try await http("PATCH", server.url("/api/rooms/r/messages/\(id)"), body: #"{"content":"x","user":"bob"}"#), 403, "forbidden")

            // The author deletes it over HTTP: gone from history, replies' quotes, edits and search.
            let deleted = try await http("DELETE", server.url("/api/rooms/r/messages/\(id)?user=alice"))
            #expect(deleted.status == 200 && deleted.json["deleted"].bool == true && deleted.json["content"].string == "")
            let tombstone = try await back.expect("message")
            #expect(tombstone["kind"].string == "delete" && tombstone["target"].string == id)
            let after = try await http("GET", server.url("/api/rooms/r/messages?user=bob"))
            #expect(!after.text.contains("hello") && !after.text.contains("helo"))
            #expect(after.json["messages"][4]["quote"]["deleted"].bool == true)
            let found = try await http("GET", server.url("/api/search?q=hello&user=bob"))
            #expect(found.status == 200 && found.json["messages"].array?.isEmpty == true)
            let again = try await http("DELETE", server.url("/api/rooms/r/messages/\(id)?user=alice"))
            #expect(again.status == 200)
            expectError(try await http("PATCH", server.url("/api/rooms/r/messages/\(id)"), body: #"{"content":"back","user":"alice"}"#), 404, "not_found")
        }
    }

    @Test("gRPC Chat streams edit, delete and react, and see each other's changes")
    func grpcChatChanges() async throws {
        try await withServer { server in
            try await withChatClient(port: server.grpcPort) { client in
                let alice = EventStream.chat(client)
                _ = try await alice.request(.connect(.with { $0.user = "alice" }), id: "c")
                let bob = EventStream.chat(client)
                _ = try await bob.request(.connect(.with { $0.user = "bob" }), id: "c")
                _ = try await bob.request(.join(.with { $0.roomID = "g" }), id: "j")
                guard case .message(let posted)? = try await alice.request(.message(.with {
                    $0.roomID = "g"
                    $0.content = "typo"
                }), id: "m") else { throw TestFailure("no message ack") }
                guard case .change(let edited)? = try await alice.request(.edit(.with {
                    $0.roomID = "g"
                    $0.messageID = posted.message.id
                    $0.content = "fixed"
                }), id: "e") else { throw TestFailure("no change ack") }
                #expect(edited.message.content == "fixed" && edited.message.hasEdited)
                guard case .change(let reacted)? = try await alice.request(.react(.with {
                    $0.roomID = "g"
                    $0.messageID = posted.message.id
                    $0.emoji = "✅"
                }), id: "r") else { throw TestFailure("no change ack") }
                #expect(reacted.message.reactions.first?.userIds == ["alice"])
                guard case .change(let gone)? = try await alice.request(.delete(.with {
                    $0.roomID = "g"
                    $0.messageID = posted.message.id
                }), id: "d") else { throw TestFailure("no change ack") }
                #expect(gone.message.deleted && gone.message.content.isEmpty)
                let rows = try await bob.messages(4)
                #expect(rows.map(\.kind) == [.message, .edit, .react, .delete])
                #expect(rows.dropFirst().allSatisfy { $0.targetID == posted.message.id })
                alice.cancel()
                bob.cancel()
            }
        }
    }

    @Test("gRPC Chat streams call and signal: the callee's stream rings with ICE servers, the accept and SDP reach the caller")
    func grpcCalls() async throws {
        try await withServer({ $0.ice.stun = ["stun:stun.example:3478"] }) { server in
            try await withChatClient(port: server.grpcPort) { client in
                let alice = EventStream.chat(client)
                _ = try await alice.request(.connect(.with { $0.user = "alice" }), id: "c")
                let bob = EventStream.chat(client)
                _ = try await bob.request(.connect(.with { $0.user = "bob" }), id: "c")
                guard case .call(let started)? = try await alice.request(.call(.with { $0.userID = "bob" }), id: "call") else {
                    throw TestFailure("no call ack")
                }
                #expect(started.iceServers.first?.urls == ["stun:stun.example:3478"])
                let ring = try await bob.expect { if case .call = $0.event { true } else { false } }.call
                #expect(ring.type == "ring" && ring.fromUserID == "alice" && ring.call == started.call && ring.iceServers.count == 1)
                _ = try await bob.request(.signal(.with {
                    $0.call = ring.call
                    $0.type = "accept"
                }), id: "a")
                let accepted = try await alice.expect { if case .call = $0.event { true } else { false } }.call
                #expect(accepted.type == "accept" && accepted.fromUserID == "bob")
                _ = try await alice.request(.signal(.with {
                    $0.call = ring.call
                    $0.type = "offer"
                    $0.data = "v=0"
                    $0.toSession = accepted.fromSession
                }), id: "o")
                let offer = try await bob.expect { if case .call = $0.event { true } else { false } }.call
                #expect(offer.type == "offer" && offer.data == "v=0")
                // Only the two parties: a forged type is refused.
                bob.send(.signal(.with {
                    $0.call = ring.call
                    $0.type = "ring"
                }), requestID: "x")
                let refused = try await bob.reply(to: "x")
                if case .error(let error) = refused.event { #expect(error.reason == "bad_request") } else { Issue.record("ring was accepted from a client") }
                alice.cancel()
                bob.cancel()
            }
        }
    }
}
