import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import NIOPosix
import ParleyGRPC
import SwiftProtobuf
import ParleyTestSupport
import Testing

/// `chat.v1.ChatService` and `grpc.health.v1.Health` through a real grpc-swift client over
/// loopback, against a live server.
@Suite("gRPC ChatService")
struct GRPCTests {
    static func send(
        _ client: ChatClient, room: String = "general", user: String = "alice", _ content: String,
        clientID: String? = nil, metadata: Metadata = [:]
    ) async throws -> Chat_V1_MessageAck {
        let message = Chat_V1_ChatMessage.with {
            $0.roomID = room
            $0.senderID = user
            $0.content = content
            if let clientID { $0.clientID = clientID }
        }
        return try await client.sendMessage(request: ClientRequest(message: message, metadata: metadata))
    }

    @Test("SendMessage stores and acks, honours client_id; GetHistory, GetPresence and GetUser answer")
    func unaryRPCs() async throws {
        try await withServer { server in
            try await withChatClient(port: server.grpcPort) { client in
                let ack = try await Self.send(client, "  Bonjour !  ", clientID: "c-1")
                #expect(ack.message.seq == 1)
                #expect(ack.message.content == "Bonjour !")
                #expect(ack.message.senderID == "alice")
                #expect(ack.message.roomID == "general")
                #expect(ack.message.clientID == "c-1")
                #expect(ack.message.id.count == 26)
                #expect(ack.message.timestamp.seconds > 1_700_000_000)
                #expect(!ack.duplicate)

                let retry = try await Self.send(client, "Bonjour !", clientID: "c-1")
                #expect(retry.duplicate)
                #expect(retry.message == ack.message)
                let second = try await Self.send(client, "encore")
                #expect(second.message.seq == 2)
                #expect(!second.message.hasClientID)

                // The same history over HTTP and gRPC.
                let page = try await client.getHistory(.with { $0.roomID = "general" })
                #expect(page.messages.map(\.seq) == [1, 2])
                #expect(page.messages[0] == ack.message)
                #expect(!page.hasMore_p)
                let older = try await client.getHistory(.with {
                    $0.roomID = "general"
                    $0.beforeSeq = 2
                    $0.limit = 1
                })
                #expect(older.messages.map(\.seq) == [1])
                let http = try await http("GET", server.url("/api/rooms/general/messages"))
                #expect(http.json["messages"][0]["id"].string == ack.message.id)

                #expect(try await client.getPresence(.with { $0.roomID = "general" }).users.isEmpty)
                #expect(await grpcStatus { _ = try await client.getUser(.with { $0.userID = "bob" }) } == .notFound)
                let bob = try await TestClient.connect(port: server.port, user: "bob")
                try await bob.ack("join", ["room": "general"])
                let presence = try await client.getPresence(.with { $0.roomID = "general" })
                #expect(presence.roomID == "general")
                #expect(presence.users.map(\.userID) == ["bob"])
                #expect(presence.users[0].since.seconds > 1_700_000_000)
                let user = try await client.getUser(.with { $0.userID = "bob" })
                #expect(user.user == "bob")
                #expect(user.online)
                #expect(user.rooms == ["general"])
            }
        }
    }

    @Test("errors map to the spec's status codes")
    func errorStatuses() async throws {
        try await withServer({ $0.limits.ratePerSecond = 0.01; $0.limits.rateBurst = 2 }) { server in
            try await withChatClient(port: server.grpcPort) { client in
                #expect(await grpcStatus { _ = try await Self.send(client, room: "no room!", "x") } == .invalidArgument)
                #expect(await grpcStatus { _ = try await Self.send(client, "   ") } == .invalidArgument)
                #expect(await grpcStatus { _ = try await Self.send(client, "a\u{0}b") } == .invalidArgument)
                #expect(await grpcStatus { _ = try await Self.send(client, String(repeating: "x", count: 4001)) } == .invalidArgument)
                #expect(await grpcStatus { _ = try await Self.send(client, user: "", "who am I") } == .unauthenticated)
                #expect(await grpcStatus { _ = try await Self.send(client, user: "bad user", "x") } == .invalidArgument)
                #expect(await grpcStatus { _ = try await client.getHistory(.with { $0.roomID = "general"; $0.limit = 0 }) } == .invalidArgument)
                #expect(await grpcStatus { _ = try await client.getHistory(.with { $0.roomID = "general"; $0.beforeSeq = -1 }) } == .invalidArgument)
                #expect(await grpcStatus { _ = try await client.getPresence(.with { $0.roomID = "" }) } == .invalidArgument)
                #expect(await grpcStatus { _ = try await client.getUser(.with { $0.userID = "no one!" }) } == .invalidArgument)

                // A request over the 64 KiB limit.
                let oversize = await grpcStatus { _ = try await Self.send(client, String(repeating: "é", count: 40_000)) }
                #expect(oversize == .resourceExhausted)

                // The rate limit (burst 2, then one token per 100 s) names the wait.
                _ = try await Self.send(client, user: "rater", "1")
                _ = try await Self.send(client, user: "rater", "2")
                do {
                    _ = try await Self.send(client, user: "rater", "3")
                    Issue.record("third message was not rate limited")
                } catch let error as RPCError {
                    #expect(error.code == .resourceExhausted)
                    #expect(error.metadata[stringValues: "parley-error"].first(where: { _ in true }) == "rate_limited")
                    let wait = error.metadata[stringValues: "retry-after-ms"].first(where: { _ in true }).flatMap { Int($0) }
                    #expect((wait ?? 0) > 1000)
                }
                // Nothing of the refused calls was stored.
                let page = try await client.getHistory(.with { $0.roomID = "general" })
                #expect(page.messages.map(\.content) == ["1", "2"])
            }
        }
    }

    @Test("JoinChat acks first, replays from since_seq, then streams live messages with no gap or duplicate")
    func joinChatResumes() async throws {
        try await withServer({ $0.limits.ratePerSecond = 0 }) { server in
            try await withChatClient(port: server.grpcPort) { client in
                for index in 1...5 { _ = try await Self.send(client, "m\(index)") }
                let stream = EventStream.join(client, room: "general", user: "carol", since: 2)
                let first = try #require(await stream.next())
                guard case .ack(let ack) = first.event, case .join(let joined) = ack.result else {
                    throw TestFailure("first event is not the join ack: \(first)")
                }
                #expect(joined.roomID == "general")
                #expect(joined.seq == 5)
                #expect(joined.users.map(\.userID) == ["carol"])
                #expect(try await stream.messages(3).map(\.seq) == [3, 4, 5])

                // Live messages from another transport follow the replay.
                let bob = try await TestClient.connect(port: server.port, user: "bob")
                let stored = try await bob.ack("message", ["room": "general", "content": "from the web"])
                let live = try await stream.messages(1)[0]
                #expect(live.seq == 6)
                #expect(live.id == stored["id"].string)
                #expect(live.content == "from the web")
                stream.cancel()
            }
        }
    }

    @Test("a JoinChat started while messages flow sees every one exactly once, in order")
    func joinChatSeam() async throws {
        // Its polling of GetHistory is scaffolding: no read budget. A sustained flow, so one
        // heavy test at a time.
        try await withHeavyTestLock { try await runJoinChatSeam() }
    }

    private func runJoinChatSeam() async throws {
        try await withServer({
            $0.limits.ratePerSecond = 0
            $0.limits.commandRatePerSecond = 0
        }) { server in
            try await withChatClient(port: server.grpcPort) { client in
                let total = 300
                let publisher = Task {
                    for index in 1...total { _ = try await Self.send(client, "m\(index)") }
                }
                // Join partway through, from the very beginning of the room. Under a full suite's
                // load (fuzzers, browsers, other servers' fsyncs) the first appends can be slow:
                // what matters is joining while messages flow, not how many came first.
                try await waitUntil(timeout: .seconds(60), every: .milliseconds(20)) {
                    (try? await client.getHistory(.with { $0.roomID = "general"; $0.limit = 1 }).messages.first?.seq ?? 0) ?? 0 >= 20
                }
                let stream = EventStream.join(client, room: "general", user: "late", since: 0)
                let seqs = try await stream.messages(total).map(\.seq)
                #expect(seqs == Array(1...Int64(total)))
                try await publisher.value
                let extra = await stream.events.pop(timeout: .milliseconds(300))
                #expect(extra == nil, "unexpected event after the last message: \(String(describing: extra))")
                stream.cancel()
            }
        }
    }

    @Test("Chat carries every WebSocket command and event, both ways with WebSocket clients")
    func chatBidirectional() async throws {
        try await withServer { server in
            try await withChatClient(port: server.grpcPort) { client in
                let alice = EventStream.chat(client)
                guard case .connect(let connected)? = try await alice.request(.connect(.with { $0.user = "alice" }), id: "1") else {
                    throw TestFailure("no connect result")
                }
                #expect(connected.userID == "alice")
                #expect(!connected.session.isEmpty)
                guard case .join(let joined)? = try await alice.request(.join(.with { $0.roomID = "general" }), id: "2") else {
                    throw TestFailure("no join result")
                }
                #expect(joined.seq == 0)
                #expect(joined.users.map(\.userID) == ["alice"])

                let bob = try await TestClient.connect(port: server.port, user: "bob")
                try await bob.ack("join", ["room": "general"])
                let bobJoined = try await alice.expect { if case .join = $0.event { true } else { false } }
                #expect(bobJoined.join.userID == "bob")

                // gRPC -> WebSocket: the ack first, then the event to every member, sender included.
                guard case .message(let sent)? = try await alice.request(
                    .message(.with { $0.roomID = "general"; $0.content = "salut"; $0.clientID = "k1" }), id: "3"
                ) else { throw TestFailure("no message ack") }
                #expect(sent.message.seq == 1)
                #expect(!sent.duplicate)
                let echoed = try await alice.messages(1)[0]
                #expect(echoed == sent.message)
                let atBob = try await bob.expect("message")
                #expect(atBob["id"].string == sent.message.id)
                #expect(atBob["user"].string == "alice")
                #expect(atBob["clientId"].string == "k1")

                // WebSocket -> gRPC.
                let fromBob = try await bob.ack("message", ["room": "general", "content": "coucou"])
                let received = try await alice.messages(1)[0]
                #expect(received.id == fromBob["id"].string)
                #expect(received.senderID == "bob")
                #expect(received.seq == 2)

                // Typing and read receipts reach the WebSocket member.
                guard case .typing? = try await alice.request(.typing(.with { $0.roomID = "general"; $0.typing = true }), id: "4") else {
                    throw TestFailure("no typing result")
                }
                let typing = try await bob.expect("typing")
                #expect(typing["user"].string == "alice")
                #expect(typing["typing"].bool == true)
                guard case .read(let read)? = try await alice.request(.read(.with { $0.roomID = "general"; $0.seq = 2 }), id: "5") else {
                    throw TestFailure("no read result")
                }
                #expect(read.seq == 2)
                let receipt = try await bob.expect("read")
                #expect(receipt["user"].string == "alice")
                #expect(receipt["seq"].int == 2)
                // And the WebSocket member's typing reaches the stream.
                try await bob.ack("typing", ["room": "general", "typing": true])
                let bobTyping = try await alice.expect { if case .typing = $0.event { true } else { false } }
                #expect(bobTyping.typing.userID == "bob")

                guard case .history(let page)? = try await alice.request(.history(.with { $0.roomID = "general" }), id: "6") else {
                    throw TestFailure("no history result")
                }
                #expect(page.messages.map(\.seq) == [1, 2])
                guard case .presence(let presence)? = try await alice.request(.presence(.with { $0.roomID = "general" }), id: "7") else {
                    throw TestFailure("no presence result")
                }
                #expect(presence.users.map(\.userID) == ["alice", "bob"])

                alice.send(.ping(.init()), requestID: "8")
                let pong = try await alice.reply(to: "8")
                #expect(pong.pong.requestID == "8")

                // A bad command gets an error event and the stream stays open.
                alice.send(.leave(.with { $0.roomID = "not joined" }), requestID: "9")
                let bad = try await alice.reply(to: "9")
                #expect(bad.error.code == .invalidArgument)
                #expect(bad.error.reason == "bad_request")
                alice.send(.leave(.with { $0.roomID = "elsewhere" }), requestID: "10")
                #expect(try await alice.reply(to: "10").error.reason == "not_found")
                alice.send(.typing(.with { $0.roomID = "elsewhere"; $0.typing = true }), requestID: "")
                let anonymous = try await alice.expect { if case .error = $0.event { true } else { false } }
                #expect(anonymous.error.requestID.isEmpty)
                #expect(anonymous.error.code == .notFound)
                alice.send(ChatCommandWithNothing.none, requestID: "11")
                #expect(try await alice.reply(to: "11").error.reason == "bad_request")

                guard case .leave? = try await alice.request(.leave(.with { $0.roomID = "general" }), id: "12") else {
                    throw TestFailure("no leave result")
                }
                let left = try await bob.expect("leave")
                #expect(left["user"].string == "alice")
                alice.cancel()
            }
        }
    }

    @Test("Chat without credentials: commands before connect are refused, and no connect in time ends it")
    func chatNeedsConnect() async throws {
        try await withServer({ $0.handshakeTimeout = .seconds(3) }) { server in
            try await withChatClient(port: server.grpcPort) { client in
                let stream = EventStream.chat(client)
                stream.send(.join(.with { $0.roomID = "general" }), requestID: "1")
                let refused = try await stream.reply(to: "1")
                #expect(refused.error.code == .unauthenticated)
                #expect(refused.error.reason == "unauthorized")
                stream.send(.ping(.init()), requestID: "2")
                #expect(try await stream.reply(to: "2").pong.requestID == "2")
                let ending = try #require(await stream.ended(timeout: .seconds(20)))
                #expect(ending?.code == .unauthenticated)

                // A connected stream is not ended by the timer.
                let connected = EventStream.chat(client)
                _ = try await connected.request(.connect(.with { $0.user = "alice" }), id: "c")
                try await Task.sleep(for: .seconds(4))
                _ = try await connected.request(.join(.with { $0.roomID = "general" }), id: "j")
                connected.cancel()
            }
        }
    }

    @Test("cancelling a JoinChat leaves the room: the others get the leave event")
    func cancelLeaves() async throws {
        try await withServer { server in
            try await withChatClient(port: server.grpcPort) { client in
                let bob = try await TestClient.connect(port: server.port, user: "bob")
                try await bob.ack("join", ["room": "general"])
                let carol = EventStream.join(client, room: "general", user: "carol")
                _ = try #require(await carol.next())
                let joined = try await bob.expect("join")
                #expect(joined["user"].string == "carol")
                carol.cancel()
                let left = try await bob.expect("leave")
                #expect(left["user"].string == "carol")
                try await waitUntil { server.engine.sessionCount == 1 }
            }
        }
    }

    @Test("a stream that stops reading is cut off with RESOURCE_EXHAUSTED; the room keeps going")
    func slowConsumer() async throws {
        try await withServer({ $0.limits.ratePerSecond = 0; $0.limits.maxOutboxBytes = 256 * 1024 }) { server in
            // The slow stream's client reads through a relay that stops reading from the
            // server once the stream has its join ack.
            let relay = try await TCPRelay.start(to: server.grpcPort)
            defer { Task { await relay.stop() } }
            let started = AsyncQueue<Void>()
            let slow = Task {
                try await withChatClient(port: relay.port) { slowClient in
                    try await slowClient.joinChat(request: ClientRequest(message: .with { $0.roomID = "general"; $0.userID = "slow" })) { response in
                        var events = response.messages.makeAsyncIterator()
                        _ = try await events.next()
                        started.push(())
                        while try await events.next() != nil {}
                    }
                }
            }
            #expect(await started.pop(timeout: .seconds(10)) != nil)
            try await relay.setServerReading(false)
            try await withChatClient(port: server.grpcPort) { client in
                let fast = EventStream.join(client, room: "general", user: "fast")
                _ = try #require(await fast.next())

                let total = 3000
                let content = String(repeating: "x", count: 3900)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for lane in 0..<4 {
                        group.addTask {
                            for index in stride(from: lane, to: total, by: 4) {
                                _ = try await Self.send(client, user: "pub", "\(index) \(content)")
                            }
                        }
                    }
                    try await group.waitForAll()
                }
                let seqs = try await fast.messages(total, timeout: .seconds(60)).map(\.seq)
                #expect(seqs == Array(1...Int64(total)))
                // The server let go of the slow stream's session; its status says why.
                try await waitUntil { server.engine.sessionCount == 1 }
                try await relay.setServerReading(true)
                do {
                    try await slow.value
                    Issue.record("the slow stream was not cut off")
                } catch let error as RPCError {
                    #expect(error.code == .resourceExhausted)
                }
                fast.cancel()
            }
        }
    }

    @Test("graceful shutdown ends streams with UNAVAILABLE; Health reports SERVING, then NOT_SERVING")
    func shutdownAndHealth() async throws {
        let server = try await TestServer.start()
        do {
            try await withGRPCClient(
                transport: .http2NIOPosix(target: .ipv4(address: "127.0.0.1", port: server.grpcPort), transportSecurity: .plaintext)
            ) { grpc in
                let health = Grpc_Health_V1_Health.Client(wrapping: grpc)
                #expect(try await health.check(.with { $0.service = "" }).status == .serving)
                #expect(try await health.check(.with { $0.service = "chat.v1.ChatService" }).status == .serving)
                #expect(await grpcStatus { _ = try await health.check(.with { $0.service = "other" }) } == .notFound)
                let statuses = AsyncQueue<Grpc_Health_V1_HealthCheckResponse.ServingStatus>()
                let watch = Task {
                    try await health.watch(request: ClientRequest(message: .with { $0.service = "" })) { response in
                        for try await update in response.messages { statuses.push(update.status) }
                    }
                }
                #expect(await statuses.pop(timeout: .seconds(10)) == .serving)

                let client = Chat_V1_ChatService.Client(wrapping: grpc)
                let stream = EventStream.join(client, room: "general", user: "alice")
                _ = try #require(await stream.next())
                let stopping = ContinuousClock.now
                await server.stop()
                let stopped = ContinuousClock.now - stopping
                let ending = try #require(await stream.ended())
                #expect(ending?.code == .unavailable)
                let last = await statuses.pop(timeout: .seconds(10))
                let watchEnd = await Task { try await watch.value }.result
                #expect(last == .notServing, "stop took \(stopped); watch ended with \(watchEnd)")
                watch.cancel()
            }
        } catch {
            await server.stop()
            throw error
        }
    }
}

/// A `ChatCommand` with no command set, as a newer client's unknown command would arrive.
enum ChatCommandWithNothing {
    static let none: Chat_V1_ChatCommand.OneOf_Command? = nil
}

extension EventStream {
    func send(_ command: Chat_V1_ChatCommand.OneOf_Command?, requestID: String) {
        sendRaw(.with {
            $0.requestID = requestID
            $0.command = command
        })
    }
}

@Suite("gRPC start-up")
struct GRPCStartupTests {
    @Test("a gRPC port already in use stops start-up with an error naming it")
    func portTaken() async throws {
        let holder = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(host: "127.0.0.1", port: 0).get()
        let port = try #require(holder.localAddress?.port)
        let result = try await runToCompletion(
            ServerProcess.executable,
            ["serve", "--host", "127.0.0.1", "--port", "0", "--grpc-port", "\(port)", "--storage", "memory"],
            timeout: .seconds(30)
        )
        try await holder.close()
        #expect(result.status != 0 && result.status != nil)
        #expect(result.output.contains("gRPC could not listen on 127.0.0.1:\(port)"), "\(result.output)")
    }

    @Test("an HTTP port already in use stops the whole process with an error naming it, gRPC included")
    func httpPortTaken() async throws {
        let holder = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(host: "127.0.0.1", port: 0).get()
        let port = try #require(holder.localAddress?.port)
        let result = try await runToCompletion(
            ServerProcess.executable,
            ["serve", "--host", "127.0.0.1", "--port", "\(port)", "--grpc-port", "0", "--data-dir", temporaryDirectory()],
            timeout: .seconds(30)
        )
        try await holder.close()
        #expect(result.status != 0 && result.status != nil, "still running: \(result.output)")
        #expect(result.output.contains("HTTP server on 127.0.0.1:\(port)"), "\(result.output)")
        #expect(result.output.contains("in use"), "\(result.output)")
    }
}

@Suite("gRPC server reflection")
struct GRPCReflectionTests {
    @Test("reflection lists the services and serves each file with its imports; unknown names are NOT_FOUND")
    func reflection() async throws {
        try await withServer { server in
            try await withGRPCClient(
                transport: .http2NIOPosix(target: .ipv4(address: "127.0.0.1", port: server.grpcPort), transportSecurity: .plaintext)
            ) { grpc in
                let reflection = Grpc_Reflection_V1_ServerReflection.Client(wrapping: grpc)
                let requests: [Grpc_Reflection_V1_ServerReflectionRequest] = [
                    .with { $0.listServices = "" },
                    .with { $0.fileContainingSymbol = "chat.v1.ChatService.SendMessage" },
                    .with { $0.fileContainingSymbol = "grpc.health.v1.HealthCheckResponse.ServingStatus" },
                    .with { $0.fileByFilename = "chat/v1/chat.proto" },
                    .with { $0.fileContainingSymbol = "chat.v1.Nothing" },
                ]
                let responses = try await reflection.serverReflectionInfo(
                    request: StreamingClientRequest { writer in try await writer.write(contentsOf: requests) }
                ) { response in
                    try await response.messages.reduce(into: []) { $0.append($1) }
                }
                #expect(responses.count == 5)
                #expect(responses[0].listServicesResponse.service.map(\.name) == [
                    "chat.v1.ChatService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                ])
                let chatFiles = try responses[1].fileDescriptorResponse.fileDescriptorProto.map {
                    try Google_Protobuf_FileDescriptorProto(serializedBytes: $0)
                }
                #expect(chatFiles.map(\.name) == ["chat/v1/chat.proto", "google/protobuf/timestamp.proto"])
                #expect(chatFiles[0].service.first?.method.map(\.name).contains("JoinChat") == true)
                let healthFiles = try responses[2].fileDescriptorResponse.fileDescriptorProto.map {
                    try Google_Protobuf_FileDescriptorProto(serializedBytes: $0)
                }
                #expect(healthFiles.map(\.name) == ["grpc/health/v1/health.proto"])
                #expect(responses[3].fileDescriptorResponse.fileDescriptorProto == responses[1].fileDescriptorResponse.fileDescriptorProto)
                #expect(responses[4].errorResponse.errorCode == 5)
                #expect(responses[4].originalRequest.fileContainingSymbol == "chat.v1.Nothing")
            }
        }
    }
}
