import Foundation
import Testing

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

@Suite("Chat over WebSocket")
struct ChatTests {
    @Test("two clients chat in a room and see each other's presence")
    func twoClientsChat() async throws {
        try await withServer { server in
            let alice = try await TestClient.connect(port: server.port, user: "alice")
            let bob = try await TestClient.connect(port: server.port, user: "bob")
            let aliceJoin = try await alice.ack("join", ["room": "general"])
            #expect(aliceJoin["room"].string == "general")
            #expect(aliceJoin["seq"].int == 0)
            #expect(aliceJoin["users"].array?.compactMap { $0["user"].string } == ["alice"])

            let bobJoin = try await bob.ack("join", ["room": "general"])
            #expect(bobJoin["users"].array?.compactMap { $0["user"].string } == ["alice", "bob"])
            #expect(bobJoin["users"][0]["since"].string?.hasSuffix("Z") == true)
            let joined = try await alice.expect("join")
            #expect(joined["user"].string == "bob")
            #expect(joined["room"].string == "general")

            let stored = try await alice.ack("message", ["room": "general", "content": "  Bonjour tout le monde !  ", "clientId": "c-1"])
            #expect(stored["seq"].int == 1)
            #expect(stored["user"].string == "alice")
            #expect(stored["content"].string == "Bonjour tout le monde !")
            #expect(stored["clientId"].string == "c-1")
            #expect(stored["id"].string?.count == 26)
            #expect(stored["timestamp"].string?.range(of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"#, options: .regularExpression) != nil)

            let received = try await bob.expect("message")
            #expect(received == stored)
            let echoed = try await alice.expect("message")
            #expect(echoed == stored)

            let presence = try await bob.ack("presence", ["room": "general"])
            #expect(presence["users"].array?.compactMap { $0["user"].string } == ["alice", "bob"])
        }
    }

    @Test("a user's join event is not sent back to that user")
    func noSelfJoinEvent() async throws {
        try await withServer { server in
            let alice = try await TestClient.connect(port: server.port, user: "alice")
            try await alice.ack("join", ["room": "solo"])
            let frames = try await alice.drain(for: .milliseconds(300))
            #expect(frames.isEmpty)
        }
    }

    @Test("leaving and disconnecting send leave events; a second session does not")
    func leaveEvents() async throws {
        try await withServer { server in
            let alice = try await TestClient.connect(port: server.port, user: "alice")
            let bob = try await TestClient.connect(port: server.port, user: "bob")
            let bob2 = try await TestClient.connect(port: server.port, user: "bob")
            try await alice.ack("join", ["room": "r"])
            try await bob.ack("join", ["room": "r"])
            _ = try await alice.expect("join") { $0["user"].string == "bob" }
            try await bob2.ack("join", ["room": "r"])
            // bob's second session is not a new presence: no join event for it.
            try await bob2.ack("leave", ["room": "r"])
            try await alice.request("ping")
            #expect(try await alice.drain(for: .milliseconds(200)).allSatisfy { $0["event"].string != "join" && $0["event"].string != "leave" })

            try await bob.ack("leave", ["room": "r"])
            let left = try await alice.expect("leave")
            #expect(left["user"].string == "bob")
            #expect(left["room"].string == "r")

            try await bob.ack("join", ["room": "r"])
            _ = try await alice.expect("join") { $0["user"].string == "bob" }
            bob.close()
            let gone = try await alice.expect("leave")
            #expect(gone["user"].string == "bob")
            let presence = try await alice.ack("presence", ["room": "r"])
            #expect(presence["users"].array?.compactMap { $0["user"].string } == ["alice"])
        }
    }

    @Test("messages stay in their room")
    func roomIsolation() async throws {
        try await withServer { server in
            let alice = try await TestClient.connect(port: server.port, user: "alice")
            let bob = try await TestClient.connect(port: server.port, user: "bob")
            try await alice.ack("join", ["room": "a"])
            try await bob.ack("join", ["room": "b"])
            try await alice.ack("message", ["room": "a", "content": "for a"])
            let inB = try await bob.ack("message", ["room": "b", "content": "for b"])
            #expect(inB["seq"].int == 1)
            let bobFrames = try await bob.drain(for: .milliseconds(300))
            #expect(bobFrames.compactMap { $0["data"]["room"].string } == ["b"])
        }
    }

    @Test("posting to a room not joined gives only the ack")
    func postWithoutJoining() async throws {
        try await withServer { server in
            let alice = try await TestClient.connect(port: server.port, user: "alice")
            let stored = try await alice.ack("message", ["room": "elsewhere", "content": "hi"])
            #expect(stored["seq"].int == 1)
            #expect(try await alice.drain(for: .milliseconds(300)).isEmpty)
        }
    }

    @Test("typing is relayed, coalesced, and expires after 5 s")
    func typingExpires() async throws {
        try await withServer { server in
            let alice = try await TestClient.connect(port: server.port, user: "alice")
            let bob = try await TestClient.connect(port: server.port, user: "bob")
            try await alice.ack("join", ["room": "r"])
            try await bob.ack("join", ["room": "r"])
            _ = try await alice.expect("join")
            try await alice.ack("typing", ["room": "r", "typing": true])
            // The renewal sets the expiry: measure from just before it is sent.
            let start = ContinuousClock.now
            try await alice.ack("typing", ["room": "r", "typing": true])
            let on = try await bob.expect("typing")
            #expect(on["user"].string == "alice")
            #expect(on["typing"].bool == true)
            let off = try await bob.expect("typing", timeout: .seconds(8))
            #expect(off["typing"].bool == false)
            let elapsed = ContinuousClock.now - start
            #expect(elapsed >= .milliseconds(4900) && elapsed < .seconds(7), "expired after \(elapsed)")
            // Coalesced: the repeated `true` produced no second event, and alice saw none of her own.
            #expect(try await alice.drain(for: .milliseconds(200)).allSatisfy { $0["event"].string != "typing" })
        }
    }

    @Test("typing false is sent at once and when the typer leaves")
    func typingStops() async throws {
        try await withServer { server in
            let alice = try await TestClient.connect(port: server.port, user: "alice")
            let bob = try await TestClient.connect(port: server.port, user: "bob")
            try await alice.ack("join", ["room": "r"])
            try await bob.ack("join", ["room": "r"])
            try await alice.ack("typing", ["room": "r", "typing": true])
            #expect(try await bob.expect("typing")["typing"].bool == true)
            try await alice.ack("typing", ["room": "r", "typing": false])
            // "At once": well before the 5 s expiry would send it, with room for a loaded machine.
            #expect(try await bob.expect("typing", timeout: .seconds(3))["typing"].bool == false)
            try await alice.ack("typing", ["room": "r", "typing": true])
            #expect(try await bob.expect("typing")["typing"].bool == true)
            alice.close()
            #expect(try await bob.expect("typing", timeout: .seconds(4))["typing"].bool == false)
        }
    }

    @Test("read receipts reach the room")
    func readReceipts() async throws {
        try await withServer { server in
            let alice = try await TestClient.connect(port: server.port, user: "alice")
            let bob = try await TestClient.connect(port: server.port, user: "bob")
            try await alice.ack("join", ["room": "r"])
            try await bob.ack("join", ["room": "r"])
            try await alice.ack("message", ["room": "r", "content": "read me"])
            let ack = try await bob.ack("read", ["room": "r", "seq": 1])
            #expect(ack["room"].string == "r")
            #expect(ack["seq"].int == 1)
            let receipt = try await alice.expect("read")
            #expect(receipt["user"].string == "bob")
            #expect(receipt["seq"].int == 1)
        }
    }

    @Test("history pages in ascending order with before, after and hasMore")
    func historyPaging() async throws {
        try await withServer { server in
            let alice = try await TestClient.connect(port: server.port, user: "alice")
            for index in 1...7 { try await alice.ack("message", ["room": "h", "content": "m\(index)"]) }
            func seqs(_ page: JSON) -> [Int] { page["messages"].array?.compactMap { $0["seq"].int } ?? [] }

            let latest = try await alice.ack("history", ["room": "h", "limit": 3])
            #expect(seqs(latest) == [5, 6, 7])
            #expect(latest["hasMore"].bool == true)
            let older = try await alice.ack("history", ["room": "h", "before": 5, "limit": 3])
            #expect(seqs(older) == [2, 3, 4])
            #expect(older["hasMore"].bool == true)
            let oldest = try await alice.ack("history", ["room": "h", "before": 2, "limit": 3])
            #expect(seqs(oldest) == [1])
            #expect(oldest["hasMore"].bool == false)
            let forward = try await alice.ack("history", ["room": "h", "after": 2, "limit": 3])
            #expect(seqs(forward) == [3, 4, 5])
            #expect(forward["hasMore"].bool == true)
            let tail = try await alice.ack("history", ["room": "h", "after": 5])
            #expect(seqs(tail) == [6, 7])
            #expect(tail["hasMore"].bool == false)
            let all = try await alice.ack("history", ["room": "h"])
            #expect(seqs(all) == Array(1...7))
            let empty = try await alice.ack("history", ["room": "never-used"])
            #expect(seqs(empty) == [])
            #expect(empty["hasMore"].bool == false)
        }
    }

    @Test("a retried clientId is stored once and acked with the original")
    func idempotentRetry() async throws {
        try await withServer { server in
            let alice = try await TestClient.connect(port: server.port, user: "alice")
            let bob = try await TestClient.connect(port: server.port, user: "bob")
            try await bob.ack("join", ["room": "r"])
            let first = try await alice.ack("message", ["room": "r", "content": "once", "clientId": "retry-1"])
            let again = try await alice.ack("message", ["room": "r", "content": "once", "clientId": "retry-1"])
            #expect(again == first)
            // Another user may use the same clientId.
            let other = try await bob.ack("message", ["room": "r", "content": "mine", "clientId": "retry-1"])
            #expect(other["seq"].int == 2)
            let page = try await alice.ack("history", ["room": "r"])
            #expect(page["messages"].array?.count == 2)
            let delivered = try await bob.drain(for: .milliseconds(300)).filter { $0["event"].string == "message" }
            #expect(delivered.compactMap { $0["data"]["seq"].int } == [1, 2])
        }
    }

    @Test("publishing over the rate gets rate_limited with retryAfterMs and the connection keeps working")
    func rateLimit() async throws {
        // One token per 10 s: the burst is used up long before a token comes back, even on a
        // loaded machine.
        try await withServer({ $0.limits.ratePerSecond = 0.1; $0.limits.rateBurst = 3 }) { server in
            let alice = try await TestClient.connect(port: server.port, user: "alice")
            for index in 1...3 { try await alice.ack("message", ["room": "r", "content": "m\(index)"]) }
            let limited = try await alice.request("message", ["room": "r", "content": "too fast"])
            #expect(limited["event"].string == "error")
            #expect(limited["data"]["code"].string == "rate_limited")
            let retry = try #require(limited["data"]["retryAfterMs"].int)
            #expect(retry > 0 && retry <= 10_000)
            // Typing is never rate limited.
            try await alice.ack("join", ["room": "r"])
            for _ in 0..<5 { try await alice.ack("typing", ["room": "r", "typing": true]) }
            try await Task.sleep(for: .milliseconds(retry + 20))
            let later = try await alice.ack("message", ["room": "r", "content": "later"])
            #expect(later["seq"].int == 4)
        }
    }

    @Test("connect frame authenticates in open mode; commands before it are unauthorized")
    func connectFrame() async throws {
        try await withServer { server in
            let client = try await TestClient.connect(port: server.port)
            let early = try await client.request("join", ["room": "r"])
            #expect(early["data"]["code"].string == "unauthorized")
            let pong = try await client.request("ping")
            #expect(pong["event"].string == "pong")
            let connected = try await client.ack("connect", ["user": "carol"])
            #expect(connected["user"].string == "carol")
            #expect(connected["session"].string?.isEmpty == false)
            let joined = try await client.ack("join", ["room": "r"])
            #expect(joined["users"][0]["user"].string == "carol")
        }
    }

    @Test("a client that never sends connect is closed after the handshake timeout")
    func handshakeTimeout() async throws {
        try await withServer({ $0.handshakeTimeout = .milliseconds(300) }) { server in
            let client = try await TestClient.connect(port: server.port)
            let code = await client.closed(timeout: .seconds(5))
            #expect(code == 1008)
        }
    }

    @Test("GET /ws without an upgrade answers 426")
    func plainGetOnWebSocket() async throws {
        try await withServer { server in
            let (_, response) = try await URLSession.shared.data(from: URL(string: server.url("/ws"))!)
            #expect((response as? HTTPURLResponse)?.statusCode == 426)
        }
    }

    @Test("an invalid ?user= refuses the upgrade with 400")
    func invalidUserRefused() async throws {
        try await withServer { server in
            var request = URLRequest(url: URL(string: server.url("/ws?user=not%20valid"))!)
            request.setValue("websocket", forHTTPHeaderField: "Upgrade")
            request.setValue("Upgrade", forHTTPHeaderField: "Connection")
            request.setValue("13", forHTTPHeaderField: "Sec-WebSocket-Version")
            request.setValue("dGhlIHNhbXBsZSBub25jZQ==", forHTTPHeaderField: "Sec-WebSocket-Key")
            let (_, response) = try await URLSession.shared.data(for: request)
            #expect((response as? HTTPURLResponse)?.statusCode == 400)
            await #expect(throws: (any Error).self) { try await TestClient.connect(port: server.port, query: "?user=") }
        }
    }

    @Test("health and readiness")
    func health() async throws {
        try await withServer { server in
            let (health, healthResponse) = try await URLSession.shared.data(from: URL(string: server.url("/healthz"))!)
            #expect((healthResponse as? HTTPURLResponse)?.statusCode == 200)
            #expect(try JSON.parse(String(decoding: health, as: UTF8.self))["status"].string == "ok")
            let (ready, readyResponse) = try await URLSession.shared.data(from: URL(string: server.url("/readyz"))!)
            #expect((readyResponse as? HTTPURLResponse)?.statusCode == 200)
            #expect(try JSON.parse(String(decoding: ready, as: UTF8.self))["store"].string == "ok")
        }
    }
}
