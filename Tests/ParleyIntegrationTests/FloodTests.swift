import Foundation
@testable import ParleyServer
import Testing

/// One member cannot make a room carry a flood: typing and read receipts are coalesced (the
/// newest state wins), everything else a connection sends draws on a budget.
@Suite("Floods")
struct FloodTests {
    @Test("a typing flood reaches the room as a few events, ending in the sender's last state")
    func typingFlood() async throws {
        try await withServer { server in
            let flooder = try await TestClient.connect(port: server.port, user: "flooder")
            let member = try await TestClient.connect(port: server.port, user: "member")
            try await member.ack("join", ["room": "r"])
            try await flooder.ack("join", ["room": "r"])
            let window = server.engine.limits.coalesceWindow
            let started = ContinuousClock.now
            for index in 0..<200 {
                // Never rejected: every one is acked.
                try await flooder.ack("typing", ["room": "r", "typing": index % 2 == 0])
            }
            try await flooder.ack("typing", ["room": "r", "typing": true])
            let elapsed = ContinuousClock.now - started
            // The member sees typing events until the final state, true, arrives and stays.
            var events: [Bool] = []
            while events.last != true || events.count < 1 {
                let event = try await member.expect("typing") { $0["user"].string == "flooder" }
                events.append(event["typing"].bool ?? false)
            }
            let bound = Int(elapsed / window) + 3
            #expect(events.count <= bound, "\(events.count) typing events for 201 changes in \(elapsed)")
            #expect(events.count < 201)
        }
    }

    @Test("a read-receipt flood reaches the room as a few events, ending in the newest position")
    func readFlood() async throws {
        try await withServer { server in
            let flooder = try await TestClient.connect(port: server.port, user: "flooder")
            let member = try await TestClient.connect(port: server.port, user: "member")
            try await member.ack("join", ["room": "r"])
            try await flooder.ack("join", ["room": "r"])
            let started = ContinuousClock.now
            for seq in 1...200 { try await flooder.ack("read", ["room": "r", "seq": seq]) }
            let elapsed = ContinuousClock.now - started
            var seqs: [Int] = []
            while seqs.last != 200 {
                seqs.append(try await member.expect("read") { $0["user"].string == "flooder" }["seq"].int ?? -1)
            }
            #expect(seqs.count <= Int(elapsed / server.engine.limits.coalesceWindow) + 3, "\(seqs)")
            #expect(seqs == seqs.sorted())
        }
    }

    @Test("join/leave, presence and history beyond the command budget are rate_limited with retryAfterMs; publishing is unaffected")
    func commandBudget() async throws {
        try await withServer({
            // Next to no refill: what is spent stays spent, however slow the machine.
            $0.limits.commandRatePerSecond = 0.001
            $0.limits.commandBurst = 20
        }) { server in
            let client = try await TestClient.connect(port: server.port, user: "flooder")
            var limited: JSON?
            for index in 0..<40 {
                let reply = try await client.request(index % 2 == 0 ? "join" : "leave", ["room": "r"])
                if reply["event"].string == "error" {
                    limited = reply
                    break
                }
            }
            let error = try #require(limited)
            #expect(error["data"]["code"].string == "rate_limited")
            #expect(error["data"]["retryAfterMs"].int ?? 0 > 0)
            #expect(try await client.request("presence", ["room": "r"])["data"]["code"].string == "rate_limited")
            #expect(try await client.request("history", ["room": "r", "limit": 100])["data"]["code"].string == "rate_limited")
            // Pings and publishing have budgets of their own.
            #expect(try await client.request("ping")["event"].string == "pong")
            let other = try await TestClient.connect(port: server.port, user: "other")
            _ = try await other.ack("message", ["room": "elsewhere", "content": "the server serves others"])
        }
    }

    @Test("anonymous HTTP and gRPC reads draw on their address's budget (429 / RESOURCE_EXHAUSTED); API keys are not limited")
    func sessionlessBudget() async throws {
        try await withServer({
            // Next to no refill: what is spent stays spent, however slow the machine.
            $0.limits.commandRatePerSecond = 0.001
            $0.limits.commandBurst = 20
            $0.auth.apiKeys = ["flood-backend-key-0123456789abcdef"]
        }) { server in
            var limited: HTTPResult?
            for _ in 0..<20 {
                let page = try await http("GET", server.url("/api/rooms/r/messages?limit=100"))
                if page.status != 200 {
                    limited = page
                    break
                }
            }
            let refused = try #require(limited)
            #expect(refused.status == 429)
            #expect(refused.json["error"]["code"].string == "rate_limited")
            #expect(Int(refused.headers["retry-after"] ?? "") ?? 0 >= 1)
            try await withChatClient(port: server.grpcPort) { client in
                #expect(await grpcStatus { _ = try await client.getHistory(.with { $0.roomID = "r"; $0.limit = 100 }) } == .resourceExhausted)
            }
            // A backend holding an API key is trusted: its reads are not limited.
            for _ in 0..<10 {
                let page = try await http("GET", server.url("/api/rooms/r/messages?limit=100"), headers: bearer("flood-backend-key-0123456789abcdef"))
                #expect(page.status == 200)
            }
            // Posting and the WebSocket are not held back by it.
            #expect(try await http("POST", server.url("/api/rooms/r/messages"), body: #"{"content":"still posting","user":"bot"}"#).status == 201)
        }
    }
}
