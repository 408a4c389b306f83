import Foundation
@testable import ParleyServer
import Testing

@Suite("HTTP API and Server-Sent Events")
struct HTTPAndSSETests {
    @Test("a message posted over HTTP reaches WebSocket and SSE members, and the reverse")
    func oneEnginePath() async throws {
        // A closed SSE stream is noticed at the next write: keep heartbeats short here.
        try await withServer({ $0.sseHeartbeat = .milliseconds(100) }) { server in
            let ws = try await TestClient.connect(port: server.port, user: "alice")
            try await ws.ack("join", ["room": "mixed"])
            let sse = try await SSEClient.open(port: server.port, path: "/rooms/mixed/events?user=watcher")
            #expect(sse.status == 200)
            _ = try await ws.expect("join") { $0["user"].string == "watcher" }

            let posted = try await http("POST", server.url("/api/rooms/mixed/messages"), body: #"{"content":"from a backend","user":"bot","clientId":"b-1"}"#)
            #expect(posted.status == 201)
            #expect(posted.json["seq"].int == 1)
            #expect(posted.json["user"].string == "bot")
            #expect(try await ws.expect("message") == posted.json)
            let overSSE = try await sse.expect("message")
            #expect(overSSE.id == "1")
            #expect(overSSE.json == posted.json)

            let fromWS = try await ws.ack("message", ["room": "mixed", "content": "from a browser"])
            let second = try await sse.expect("message")
            #expect(second.id == "2")
            #expect(second.json == fromWS)
            sse.close()
            _ = try await ws.expect("leave") { $0["user"].string == "watcher" }
        }
    }

    @Test("SSE resumes from Last-Event-ID or ?since= without gap or duplicate")
    func sseResume() async throws {
        try await withServer { server in
            for index in 1...5 {
                _ = try await http("POST", server.url("/api/rooms/r/messages"), body: #"{"content":"m\#(index)","user":"bot"}"#)
            }
            let byHeader = try await SSEClient.open(port: server.port, path: "/rooms/r/events?user=a", headers: ["Last-Event-ID": "3"])
            let byQuery = try await SSEClient.open(port: server.port, path: "/rooms/r/events?user=b&since=1")
            _ = try await http("POST", server.url("/api/rooms/r/messages"), body: #"{"content":"m6","user":"bot"}"#)
            var headerIDs: [String] = []
            for _ in 0..<3 { headerIDs.append(try await byHeader.expect("message").id ?? "") }
            #expect(headerIDs == ["4", "5", "6"])
            var queryIDs: [String] = []
            for _ in 0..<5 { queryIDs.append(try await byQuery.expect("message").id ?? "") }
            #expect(queryIDs == ["2", "3", "4", "5", "6"])
        }
    }

    @Test("SSE sends presence, typing and read events without id, and heartbeat comments")
    func sseEventsAndHeartbeat() async throws {
        try await withServer({ $0.sseHeartbeat = .milliseconds(200) }) { server in
            let sse = try await SSEClient.open(port: server.port, path: "/rooms/r/events?user=watcher")
            let comment = try #require(await sse.next(timeout: .seconds(3)))
            #expect(comment.isComment)
            let alice = try await TestClient.connect(port: server.port, user: "alice")
            try await alice.ack("join", ["room": "r"])
            let join = try await sse.expect("join")
            #expect(join.id == nil)
            #expect(join.json["user"].string == "alice")
            try await alice.ack("typing", ["room": "r", "typing": true])
            #expect(try await sse.expect("typing").json["typing"].bool == true)
            try await alice.ack("read", ["room": "r", "seq": 0])
            #expect(try await sse.expect("read").json["user"].string == "alice")
        }
    }

    @Test("history, presence, rooms and users over HTTP")
    func readEndpoints() async throws {
        try await withServer { server in
            for index in 1...4 {
                _ = try await http("POST", server.url("/api/rooms/h/messages"), body: #"{"content":"m\#(index)","user":"bot"}"#)
            }
            let latest = try await http("GET", server.url("/api/rooms/h/messages?limit=2"))
            #expect(latest.status == 200)
            #expect(latest.json["messages"].array?.compactMap { $0["seq"].int } == [3, 4])
            #expect(latest.json["hasMore"].bool == true)
            let before = try await http("GET", server.url("/api/rooms/h/messages?before=3&limit=5"))
            #expect(before.json["messages"].array?.compactMap { $0["seq"].int } == [1, 2])
            #expect(before.json["hasMore"].bool == false)
            let after = try await http("GET", server.url("/api/rooms/h/messages?after=2"))
            #expect(after.json["messages"].array?.compactMap { $0["seq"].int } == [3, 4])

            let alice = try await TestClient.connect(port: server.port, user: "alice")
            try await alice.ack("join", ["room": "h"])
            let presence = try await http("GET", server.url("/api/rooms/h/presence"))
            #expect(presence.json["room"].string == "h")
            #expect(presence.json["users"].array?.compactMap { $0["user"].string } == ["alice"])
            let rooms = try await http("GET", server.url("/api/rooms"))
            #expect(rooms.json["rooms"][0]["room"].string == "h")
            #expect(rooms.json["rooms"][0]["seq"].int == 4)
            #expect(rooms.json["rooms"][0]["online"].int == 1)
            let user = try await http("GET", server.url("/api/users/alice"))
            #expect(user.status == 200)
            #expect(user.json["online"].bool == true)
            #expect(user.json["rooms"].array?.compactMap(\.string) == ["h"])
            let nobody = try await http("GET", server.url("/api/users/nobody"))
            #expect(nobody.status == 404)
            #expect(nobody.json["error"]["code"].string == "not_found")
        }
    }

    @Test("a retried POST with the same clientId stores once and answers the original")
    func idempotentPost() async throws {
        try await withServer { server in
            let body = #"{"content":"once","user":"bot","clientId":"k-1"}"#
            let first = try await http("POST", server.url("/api/rooms/r/messages"), body: body)
            let again = try await http("POST", server.url("/api/rooms/r/messages"), body: body)
            #expect(first.status == 201 && again.status == 201)
            #expect(again.json == first.json)
            let page = try await http("GET", server.url("/api/rooms/r/messages"))
            #expect(page.json["messages"].array?.count == 1)
        }
    }

    @Test("every HTTP error path answers its status and error JSON, and stores nothing")
    func errorPaths() async throws {
        try await withServer({ $0.limits.ratePerSecond = 0.2; $0.limits.rateBurst = 1 }) { server in
            let post = server.url("/api/rooms/r/messages")
            func expectError(_ result: HTTPResult, _ status: Int, _ code: String) {
                #expect(result.status == status, "\(result.json)")
                #expect(result.json["error"]["code"].string == code, "\(result.json)")
                #expect(result.json["error"]["message"].string?.isEmpty == false)
            }
            expectError(try await http("POST", post, body: "{not json"), 400, "bad_request")
            expectError(try await http("POST", post, body: "[1]"), 400, "bad_request")
            expectError(try await http("POST", post, body: #"{"user":"bot"}"#), 400, "bad_request")
            expectError(try await http("POST", post, body: #"{"content":5,"user":"bot"}"#), 400, "bad_request")
            expectError(try await http("POST", post, body: #"{"content":"   ","user":"bot"}"#), 400, "bad_request")
            expectError(try await http("POST", post, body: #"{"content":"\#(String(repeating: "a", count: 4001))","user":"bot"}"#), 400, "bad_request")
            expectError(try await http("POST", post, body: #"{"content":"x","user":"not valid"}"#), 400, "bad_request")
            expectError(try await http("POST", post, body: #"{"content":"x"}"#), 401, "unauthorized")
            expectError(try await http("POST", server.url("/api/rooms/bad%20room/messages"), body: #"{"content":"x","user":"bot"}"#), 400, "bad_request")
            let huge = #"{"content":"\#(String(repeating: "a", count: 70_000))","user":"bot"}"#
            expectError(try await http("POST", post, body: huge), 413, "too_large")
            expectError(try await http("GET", server.url("/api/rooms/r/messages?limit=0")), 400, "bad_request")
            expectError(try await http("GET", server.url("/api/rooms/r/messages?limit=101")), 400, "bad_request")
            expectError(try await http("GET", server.url("/api/rooms/r/messages?before=abc")), 400, "bad_request")
            expectError(try await http("GET", server.url("/api/users/not%20valid")), 400, "bad_request")
            let badSSE = try await SSEClient.open(port: server.port, path: "/rooms/r/events?user=w&since=-1")
            #expect(badSSE.status == 400)

            // Nothing above was stored; now the rate limit: one per second, burst one.
            #expect(try await http("GET", server.url("/api/rooms/r/messages")).json["messages"].array?.isEmpty == true)
            #expect(try await http("POST", post, body: #"{"content":"first","user":"bot"}"#).status == 201)
            let limited = try await http("POST", post, body: #"{"content":"second","user":"bot"}"#)
            expectError(limited, 429, "rate_limited")
            #expect(Int(limited.headers["retry-after"] ?? "") ?? 0 >= 1)
            #expect(limited.json["error"]["retryAfterMs"].int ?? 0 > 0)
            #expect(try await http("GET", server.url("/api/rooms/r/messages")).json["messages"].array?.count == 1)
        }
    }
}
