import Foundation
import ParleyCore
import GRPCCore
import ParleyGRPC
@testable import ParleyServer
import Testing

/// Authentication and permissions over gRPC: metadata `authorization: Bearer <JWT or API key>`.
@Suite("gRPC authentication and permissions")
struct GRPCAuthTests {
    static let apiKey = "grpc-backend-key-0123456789abcdef0123"

    static func message(_ room: String, _ content: String, sender: String = "") -> Chat_V1_ChatMessage {
        .with {
            $0.roomID = room
            $0.senderID = sender
            $0.content = content
        }
    }

    @Test("a JWT acts as its sub; a missing, forged or expired token is UNAUTHENTICATED; another sender is PERMISSION_DENIED")
    func jwt() async throws {
        try await withJWTServer { server in
            try await withChatClient(port: server.grpcPort) { client in
                let alice = grpcBearer(try await Tokens.hs256(TestClaims(sub: "alice")))
                let ack = try await client.sendMessage(request: ClientRequest(message: Self.message("r", "hi"), metadata: alice))
                #expect(ack.message.senderID == "alice")
                let named = try await client.sendMessage(request: ClientRequest(message: Self.message("r", "me", sender: "alice"), metadata: alice))
                #expect(named.message.senderID == "alice")

                #expect(await grpcStatus { _ = try await client.sendMessage(Self.message("r", "x", sender: "alice")) } == .unauthenticated)
                #expect(await grpcStatus { _ = try await client.getHistory(.with { $0.roomID = "r" }) } == .unauthenticated)
                let forged = grpcBearer(try await Tokens.hs256(TestClaims(sub: "alice"), secret: Tokens.otherSecret))
                #expect(await grpcStatus { _ = try await client.sendMessage(request: ClientRequest(message: Self.message("r", "x"), metadata: forged)) } == .unauthenticated)
                let expired = grpcBearer(try await Tokens.hs256(TestClaims(sub: "alice", expiresIn: -600)))
                #expect(await grpcStatus { _ = try await client.getHistory(request: ClientRequest(message: .with { $0.roomID = "r" }, metadata: expired)) } == .unauthenticated)
                #expect(await grpcStatus {
                    _ = try await client.sendMessage(request: ClientRequest(message: Self.message("r", "as bob", sender: "bob"), metadata: alice))
                } == .permissionDenied)

                // Streams check the call's credential before anything else.
                let refused = EventStream.join(client, room: "r", metadata: forged)
                #expect(try #require(await refused.ended())?.code == .unauthenticated)
                let history = try await client.getHistory(request: ClientRequest(message: .with { $0.roomID = "r" }, metadata: alice))
                #expect(history.messages.map(\.content) == ["hi", "me"])
            }
        }
    }

    @Test("a token for room A may not join, post to, read or watch room B on any RPC")
    func roomsClaim() async throws {
        try await withJWTServer { server in
            try await withChatClient(port: server.grpcPort) { client in
                let token = grpcBearer(try await Tokens.hs256(TestClaims(sub: "alice", rooms: ["a", "team-*"])))
                _ = try await client.sendMessage(request: ClientRequest(message: Self.message("team-x", "ok"), metadata: token))
                #expect(await grpcStatus { _ = try await client.sendMessage(request: ClientRequest(message: Self.message("b", "no"), metadata: token)) } == .permissionDenied)
                #expect(await grpcStatus { _ = try await client.getHistory(request: ClientRequest(message: .with { $0.roomID = "b" }, metadata: token)) } == .permissionDenied)
                #expect(await grpcStatus { _ = try await client.getPresence(request: ClientRequest(message: .with { $0.roomID = "b" }, metadata: token)) } == .permissionDenied)
                let watcher = EventStream.join(client, room: "b", metadata: token)
                #expect(try #require(await watcher.ended())?.code == .permissionDenied)

                let chat = EventStream.chat(client, metadata: token)
                chat.send(.join(.with { $0.roomID = "b" }), requestID: "1")
                let denied = try await chat.reply(to: "1")
                #expect(denied.error.code == .permissionDenied)
                #expect(denied.error.reason == "forbidden")
                guard case .join? = try await chat.request(.join(.with { $0.roomID = "a" }), id: "2") else { throw TestFailure("no join") }
                chat.cancel()

                // GetUser shows only the rooms the caller's claim allows.
                let bob = grpcBearer(try await Tokens.hs256(TestClaims(sub: "bob")))
                let bobInB = EventStream.join(client, room: "b", metadata: bob)
                _ = try #require(await bobInB.next())
                #expect(await grpcStatus { _ = try await client.getUser(request: ClientRequest(message: .with { $0.userID = "bob" }, metadata: token)) } == .notFound)
                let bobInA = EventStream.join(client, room: "a", metadata: bob)
                _ = try #require(await bobInA.next())
                let seen = try await client.getUser(request: ClientRequest(message: .with { $0.userID = "bob" }, metadata: token))
                #expect(seen.rooms == ["a"])
                let everything = try await client.getUser(request: ClientRequest(message: .with { $0.userID = "bob" }, metadata: bob))
                #expect(everything.rooms.sorted() == ["a", "b"])
                bobInA.cancel()
                bobInB.cancel()
            }
        }
    }

    @Test("an API key posts and watches as the user it names; without a user or with a wrong key it is refused")
    func apiKey() async throws {
        try await withJWTServer({ $0.auth.apiKeys = [Self.apiKey] }) { server in
            try await withChatClient(port: server.grpcPort) { client in
                let key = grpcBearer(Self.apiKey)
                let ack = try await client.sendMessage(request: ClientRequest(message: Self.message("ops", "deployed", sender: "ci-bot"), metadata: key))
                #expect(ack.message.senderID == "ci-bot")
                #expect(await grpcStatus { _ = try await client.sendMessage(request: ClientRequest(message: Self.message("ops", "who?"), metadata: key)) } == .invalidArgument)
                let wrong = grpcBearer("not-the-key-0123456789abcdef0123456789")
                #expect(await grpcStatus { _ = try await client.sendMessage(request: ClientRequest(message: Self.message("ops", "x", sender: "ci-bot"), metadata: wrong)) } == .unauthenticated)
                // Any room may be read.
                let page = try await client.getHistory(request: ClientRequest(message: .with { $0.roomID = "ops" }, metadata: key))
                #expect(page.messages.count == 1)

                let watcher = EventStream.join(client, room: "ops", user: "monitor", since: 0, metadata: key)
                _ = try #require(await watcher.next())
                #expect(try await watcher.messages(1)[0].content == "deployed")
                let presence = try await client.getPresence(request: ClientRequest(message: .with { $0.roomID = "ops" }, metadata: key))
                #expect(presence.users.map(\.userID) == ["monitor"])
                let nameless = EventStream.join(client, room: "ops", metadata: key)
                #expect(try #require(await nameless.ended())?.code == .invalidArgument)

                // On Chat, a backend names its user with connect.
                let chat = EventStream.chat(client, metadata: key)
                guard case .connect(let connected)? = try await chat.request(.connect(.with { $0.user = "helper" }), id: "1") else {
                    throw TestFailure("no connect")
                }
                #expect(connected.userID == "helper")
                // ... and posts as that user.
                guard case .join? = try await chat.request(.join(.with { $0.roomID = "ops" }), id: "2") else { throw TestFailure("no join") }
                guard case .message(let posted)? = try await chat.request(.message(.with {
                    $0.roomID = "ops"
                    $0.content = "from the helper"
                }), id: "3") else { throw TestFailure("the backend's Chat stream could not post") }
                #expect(posted.message.senderID == "helper")
                watcher.cancel()
                chat.cancel()
            }
        }
    }

    @Test("a stream whose token expires is warned, then ended with UNAUTHENTICATED unless refreshed")
    func expiry() async throws {
        let clock = ManualClock(now: TokenExpiryTests.start)
        try await withJWTServer({
            $0.auth.leewaySeconds = 0
            $0.tokenRefreshGrace = .seconds(30)
            $0.clock = clock
        }) { server in
            try await withChatClient(port: server.grpcPort) { client in
                let short = grpcBearer(try await TokenExpiryTests.token("alice", expiresIn: 60))
                let expiring = EventStream.chat(client, metadata: short)
                _ = try await expiring.request(.join(.with { $0.roomID = "r" }), id: "1")
                let refreshed = EventStream.chat(client, metadata: short)
                _ = try await refreshed.request(.join(.with { $0.roomID = "r" }), id: "1")

                clock.advance(by: .seconds(61))
                for stream in [refreshed, expiring] {
                    let warning = try await stream.expect { if case .error = $0.event { true } else { false } }
                    #expect(warning.error.code == .unauthenticated)
                    #expect(warning.error.message.contains("expired"))
                }
                let fresh = try await TokenExpiryTests.token("alice")
                _ = try await refreshed.request(.connect(.with { $0.token = fresh }), id: "2")
                // Within the grace the unrefreshed stream is still open.
                clock.advance(by: .seconds(27))
                expiring.send(.ping(.init()), requestID: "p")
                _ = try await expiring.reply(to: "p")
                clock.advance(by: .seconds(3))
                let ending = try #require(await expiring.ended())
                #expect(ending?.code == .unauthenticated)
                // Well past the grace the refreshed stream still works.
                clock.advance(by: .seconds(60))
                guard case .message? = try await refreshed.request(.message(.with { $0.roomID = "r"; $0.content = "still here" }), id: "3") else {
                    throw TestFailure("no message ack")
                }
                // A refresh for another user is refused.
                let bob = try await TokenExpiryTests.token("bob")
                refreshed.send(.connect(.with { $0.token = bob }), requestID: "4")
                #expect(try await refreshed.reply(to: "4").error.code == .permissionDenied)
                refreshed.cancel()
            }
        }
    }

    @Test("gRPC streams count against the connection limits like WebSockets")
    func connectionLimit() async throws {
        try await withServer({ $0.limits.maxConnectionsPerIP = 2 }) { server in
            try await withChatClient(port: server.grpcPort) { client in
                let first = EventStream.join(client, room: "r", user: "a")
                let second = EventStream.join(client, room: "r", user: "b")
                _ = try #require(await first.next())
                _ = try #require(await second.next())
                let third = EventStream.join(client, room: "r", user: "c")
                #expect(try #require(await third.ended())?.code == .resourceExhausted)
                // Unary calls are not connections.
                _ = try await client.getHistory(.with { $0.roomID = "r" })
                first.cancel()
                try await waitUntil { server.engine.connections.count == 1 }
                let fourth = EventStream.join(client, room: "r", user: "d")
                _ = try #require(await fourth.next())
                second.cancel()
                fourth.cancel()
            }
        }
    }
}
