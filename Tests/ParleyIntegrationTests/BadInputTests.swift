import NIOCore
import NIOWebSocket
import Testing

/// Each malformed input gets exactly the spec'd error or close code. After a recoverable
/// error the same connection keeps working and nothing stored changed.
@Suite("Bad input")
struct BadInputTests {
    /// A server with one stored message in `room`, and a connected, joined client.
    func withSetup(_ body: (TestServer, TestClient) async throws -> Void) async throws {
        try await withServer { server in
            let client = try await TestClient.connect(port: server.port, user: "alice")
            try await client.ack("join", ["room": "room"])
            try await client.ack("message", ["room": "room", "content": "the only message"])
            _ = try await client.expect("message")
            try await body(server, client)
        }
    }

    /// Sends `text`, expects an `error` with `code` (echoing `id` when given), then checks
    /// that the connection still answers and the room still holds exactly its one message.
    func expectRejected(_ text: String, code: String = "bad_request", id: Int? = nil, messageContains: String? = nil) async throws {
        try await withSetup { _, client in
            client.sendText(text)
            let error = try #require(try await client.next())
            #expect(error["event"].string == "error", "\(text) -> \(error)")
            #expect(error["data"]["code"].string == code, "\(text) -> \(error)")
            #expect(error["data"]["message"].string?.isEmpty == false)
            if let messageContains {
                #expect(error["data"]["message"].string?.contains(messageContains) == true, "\(error)")
            }
            #expect(error["id"].int == id)
            try await expectHealthy(client)
        }
    }

    func expectHealthy(_ client: TestClient) async throws {
        let pong = try await client.request("ping")
        #expect(pong["event"].string == "pong")
        let page = try await client.ack("history", ["room": "room"])
        #expect(page["messages"].array?.compactMap { $0["content"].string } == ["the only message"])
    }

    @Test func invalidJSON() async throws { try await expectRejected("{\"event\": \"message\",", messageContains: "JSON") }
    @Test func jsonArray() async throws { try await expectRejected("[1, 2, 3]", messageContains: "object") }
    @Test func jsonString() async throws { try await expectRejected("\"message\"", messageContains: "object") }
    @Test func jsonNull() async throws { try await expectRejected("null") }
    @Test func unknownEvent() async throws {
        try await expectRejected(#"{"event":"dance","data":{},"id":7}"#, id: 7, messageContains: "unknown event")
    }
    @Test func missingEvent() async throws {
        try await expectRejected(#"{"data":{"room":"room"},"id":3}"#, id: 3, messageContains: "event")
    }
    @Test func eventNotAString() async throws { try await expectRejected(#"{"event":42,"id":4}"#, id: 4) }
    @Test func idNotAScalar() async throws { try await expectRejected(#"{"event":"ping","id":{"x":1}}"#, messageContains: "id") }
    @Test func roomWrongType() async throws {
        try await expectRejected(#"{"event":"message","data":{"room":5,"content":"x"},"id":1}"#, id: 1, messageContains: "data.room")
    }
    @Test func contentWrongType() async throws {
        try await expectRejected(#"{"event":"message","data":{"room":"room","content":true},"id":1}"#, id: 1, messageContains: "data.content")
    }
    @Test func sinceWrongType() async throws {
        try await expectRejected(#"{"event":"join","data":{"room":"other","since":"3"},"id":1}"#, id: 1, messageContains: "data.since")
    }
    @Test func typingWrongType() async throws {
        try await expectRejected(#"{"event":"typing","data":{"room":"room","typing":"yes"},"id":1}"#, id: 1, messageContains: "data.typing")
    }
    @Test func seqNotAnInteger() async throws {
        try await expectRejected(#"{"event":"read","data":{"room":"room","seq":1.5},"id":1}"#, id: 1, messageContains: "invalid value")
    }
    @Test func missingData() async throws {
        try await expectRejected(#"{"event":"join","id":2}"#, id: 2, messageContains: "data")
    }
    @Test func missingContent() async throws {
        try await expectRejected(#"{"event":"message","data":{"room":"room"},"id":2}"#, id: 2, messageContains: "data.content")
    }
    @Test func missingRoom() async throws {
        try await expectRejected(#"{"event":"history","data":{},"id":2}"#, id: 2, messageContains: "data.room")
    }
    @Test func invalidRoomName() async throws {
        try await expectRejected(#"{"event":"message","data":{"room":"no spaces!","content":"x"},"id":1}"#, id: 1, messageContains: "room")
    }
    @Test func roomNameTooLong() async throws {
        let room = String(repeating: "r", count: 65)
        try await expectRejected(#"{"event":"join","data":{"room":"\#(room)"},"id":1}"#, id: 1, messageContains: "room")
    }
    @Test func emptyContent() async throws {
        try await expectRejected(#"{"event":"message","data":{"room":"room","content":"  \n\t "},"id":1}"#, id: 1, messageContains: "empty")
    }
    @Test func oversizeContent() async throws {
        let content = String(repeating: "é", count: 4001)
        try await expectRejected(#"{"event":"message","data":{"room":"room","content":"\#(content)"},"id":1}"#, id: 1, messageContains: "4000")
    }
    @Test func nulInContent() async throws {
        try await expectRejected(#"{"event":"message","data":{"room":"room","content":"a\u0000b"},"id":1}"#, id: 1, messageContains: "NUL")
    }
    @Test func historyLimitZero() async throws {
        try await expectRejected(#"{"event":"history","data":{"room":"room","limit":0},"id":1}"#, id: 1, messageContains: "limit")
    }
    @Test func historyLimitTooLarge() async throws {
        try await expectRejected(#"{"event":"history","data":{"room":"room","limit":101},"id":1}"#, id: 1, messageContains: "limit")
    }
    @Test func negativeBefore() async throws {
        try await expectRejected(#"{"event":"history","data":{"room":"room","before":-1},"id":1}"#, id: 1, messageContains: "before")
    }
    @Test func invalidUserInConnect() async throws {
        try await withServer { server in
            let client = try await TestClient.connect(port: server.port)
            let error = try await client.request("connect", ["user": "not valid"])
            #expect(error["data"]["code"].string == "bad_request")
            #expect(try await client.ack("connect", ["user": "valid"])["user"].string == "valid")
        }
    }
    @Test func readBeforeJoining() async throws {
        try await expectRejected(#"{"event":"read","data":{"room":"elsewhere","seq":1},"id":1}"#, code: "not_found", id: 1)
    }
    @Test func leaveRoomNotJoined() async throws {
        try await expectRejected(#"{"event":"leave","data":{"room":"elsewhere"},"id":1}"#, code: "not_found", id: 1)
    }

    @Test("joining more rooms than a connection may hold is too_large; the connection keeps its rooms")
    func tooManyRooms() async throws {
        try await withServer({ $0.limits.maxRoomsPerConnection = 2 }) { server in
            let client = try await TestClient.connect(port: server.port, user: "alice")
            try await client.ack("join", ["room": "one"])
            try await client.ack("join", ["room": "two"])
            let refused = try await client.request("join", ["room": "three"])
            #expect(refused["event"].string == "error")
            #expect(refused["data"]["code"].string == "too_large")
            #expect(try await client.ack("presence", ["room": "three"])["users"].array?.isEmpty == true)
            try await client.ack("leave", ["room": "one"])
            try await client.ack("join", ["room": "three"])
        }
    }

    @Test("a frame over 64 KiB closes the connection with 1009 and stores nothing")
    func oversizeFrame() async throws {
        try await withSetup { server, client in
            let content = String(repeating: "x", count: 64 * 1024)
            client.sendText(#"{"event":"message","data":{"room":"room","content":"\#(content)"},"id":1}"#)
            #expect(await client.closed() == 1009)
            try await expectOneMessage(server)
        }
    }

    @Test("a binary frame closes the connection with 1008")
    func binaryFrame() async throws {
        try await withSetup { server, client in
            client.sendFrame(.binary(ByteBuffer(string: #"{"event":"ping"}"#)))
            #expect(await client.closed() == 1008)
            try await expectOneMessage(server)
        }
    }

    @Test("50 bad frames in a row close with 1008; a good frame resets the count")
    func tooManyBadFrames() async throws {
        try await withSetup { server, client in
            for _ in 0..<49 { client.sendText("nope") }
            try await client.ack("presence", ["room": "room"])
            for _ in 0..<49 { client.sendText("nope") }
            try await client.ack("presence", ["room": "room"])
            for _ in 0..<50 { client.sendText("nope") }
            #expect(await client.closed() == 1008)
            try await expectOneMessage(server)
        }
    }

    func expectOneMessage(_ server: TestServer) async throws {
        let other = try await TestClient.connect(port: server.port, user: "checker")
        let page = try await other.ack("history", ["room": "room"])
        #expect(page["messages"].array?.count == 1)
    }
}
