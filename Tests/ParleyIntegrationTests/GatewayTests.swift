import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import NIOCore
import ParleyTestSupport
import Testing

/// `parley gateway` in front of real `parley serve` processes: the WebSocket protocol's core
/// cases through it, a slow consumer cut off end to end, and an upstream killed mid-traffic
/// with every subscriber resuming through the gateway without a lost or repeated message.
@Suite("WebSocket gateway")
struct GatewayTests {
    static func get(_ url: String) async throws -> (Int, String) {
        let (data, response) = try await URLSession.shared.data(from: URL(string: url)!)
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
    }

    /// `parley serve` with `server` arguments and a gateway in front of it with `gateway` ones,
    /// once the gateway is ready (its upstream answers health checks).
    static func serverAndGateway(_ server: [String], gateway: [String] = []) async throws -> (ServerProcess, ServerProcess) {
        let upstream = try await ServerProcess.start(server)
        let edge = try await ServerProcess.startGateway(["--upstream", "127.0.0.1:\(upstream.grpcPort)"] + gateway)
        try await waitUntil(timeout: .seconds(10), every: .milliseconds(50)) { (try? await get("http://127.0.0.1:\(edge.port)/readyz").0) == 200 }
        return (upstream, edge)
    }

    @Test("chat, idempotency, resume, history, errors and bad input through the gateway, with the credential passed through; the web client, /api and /ws-metrics served")
    func coreCases() async throws {
        let server = try await ServerProcess.start(["--data-dir", temporaryDirectory(), "--rate-per-sec", "0"])
        let gateway = try await ServerProcess.startGateway([
            "--upstream", "127.0.0.1:\(server.grpcPort)", "--api-upstream", "http://127.0.0.1:\(server.port)",
        ])
        defer {
            gateway.kill(SIGTERM)
            server.kill(SIGTERM)
        }
        try await waitUntil(timeout: .seconds(10), every: .milliseconds(50)) { (try? await Self.get("http://127.0.0.1:\(gateway.port)/readyz").0) == 200 }

        let alice = try await TestClient.connect(port: gateway.port, user: "alice")
        let bob = try await TestClient.connect(port: gateway.port, user: "bob")
        let joined = try await alice.ack("join", ["room": "lobby"])
        #expect(joined["room"].string == "lobby" && joined["seq"].int == 0)
        #expect(joined["users"].array?.compactMap { $0["user"].string } == ["alice"])
        try await bob.ack("join", ["room": "lobby"])
        _ = try await alice.expect("join") { $0["user"].string == "bob" }

        // Chat: the ack, then the message to every member, the sender included.
        let sent = try await alice.ack("message", ["room": "lobby", "content": "hello through the edge", "clientId": "k1"])
        #expect(sent["seq"].int == 1 && sent["user"].string == "alice" && sent["clientId"].string == "k1")
        let received = try await bob.messages(1, room: "lobby")
        #expect(received.first?["id"].string == sent["id"].string && received.first?["content"].string == "hello through the edge")

        // Idempotency: the retry is acked with the original, and nothing new is delivered.
        let retried = try await alice.ack("message", ["room": "lobby", "content": "hello through the edge", "clientId": "k1"])
        #expect(retried["id"].string == sent["id"].string && retried["seq"].int == 1)

        // Resume: bob leaves, three messages go by, bob comes back with since and gets exactly those.
        bob.close()
        for index in 2...4 { try await alice.ack("message", ["room": "lobby", "content": "missed \(index)"]) }
        let back = try await TestClient.connect(port: gateway.port, user: "bob")
        try await back.ack("join", ["room": "lobby", "since": 1])
        let resumed = try await back.messages(3, room: "lobby").compactMap { $0["seq"].int }
        #expect(resumed == [2, 3, 4])
        let page = try await back.ack("history", ["room": "lobby", "limit": 10])
        #expect(page["messages"].array?.compactMap { $0["seq"].int } == [1, 2, 3, 4])

        // The upstream's errors keep the client's id (a number or a string).
        let refused = try await back.request("join", ["room": ""])
        #expect(refused["event"].string == "error" && refused["data"]["code"].string == "bad_request")
        back.sendText(#"{"event":"leave","data":{"room":"nowhere"},"id":"s-1"}"#)
        let notMember = try await back.expect("error")
        #expect(notMember["code"].string == "not_found")
        // Frames the gateway cannot decode are answered by it, as the server answers them.
        back.sendText("{not json")
        #expect(try await back.expect("error")["code"].string == "bad_request")
        let unknown = try await back.request("teleport", ["room": "lobby"])
        #expect(unknown["event"].string == "error" && unknown["data"]["code"].string == "bad_request")
        // The connection is still fine, and a ping is answered.
        let pong = try await back.request("ping")
        #expect(pong["event"].string == "pong")
        // Too many bad frames in a row: closed with 1008.
        for _ in 0..<50 { back.sendText("[]") }
        let badClose = await back.closed(timeout: .seconds(10))
        #expect(badClose == 1008, "closed with \(String(describing: badClose))")

        // A credential that the upstream refuses ends the connection with 1008.
        let stranger = try await TestClient.connect(port: gateway.port, query: "", name: "stranger")
        let early = try await stranger.request("join", ["room": "lobby"])
        #expect(early["event"].string == "error" && early["data"]["code"].string == "unauthorized")

        // The web client, the HTTP API through to the instance, and the gateway's metrics.
        let (status, html) = try await Self.get("http://127.0.0.1:\(gateway.port)/")
        #expect(status == 200 && html.contains("<html"))
        let (apiStatus, history) = try await Self.get("http://127.0.0.1:\(gateway.port)/api/rooms/lobby/messages")
        #expect(apiStatus == 200 && history.contains("missed 4"))
        let (metricsStatus, metrics) = try await Self.get("http://127.0.0.1:\(gateway.port)/ws-metrics")
        #expect(metricsStatus == 200)
        for series in ["parley_gateway_connections ", "parley_gateway_frames_total{direction=\"in\"}", "parley_gateway_frames_total{direction=\"out\"}",
                       "parley_gateway_upstream_reply_seconds_bucket", "parley_gateway_upstream_up{upstream=\"127.0.0.1:\(server.grpcPort)\"} 1"] {
            #expect(metrics.contains(series), "no \(series) in /ws-metrics")
        }
        alice.close()
    }

    @Test("a client that stops reading behind the gateway is cut off with 1013 by the upstream and resumes where it stopped")
    func slowConsumer() async throws {
        try await withHeavyTestLock {
            let server = try await ServerProcess.start([
                "--storage", "memory", "--rate-per-sec", "0", "--outbox-bytes", "262144",
            ])
            // No gateway pings: on a loaded machine the run outlasts a ping interval, and the
            // stalled client's missing pong would close it before the upstream cuts it off.
            let gateway = try await ServerProcess.startGateway(["--upstream", "127.0.0.1:\(server.grpcPort)", "--ping-interval", "600"])
            defer {
                gateway.kill(SIGTERM)
                server.kill(SIGTERM)
            }
            try await waitUntil(timeout: .seconds(10), every: .milliseconds(50)) { (try? await Self.get("http://127.0.0.1:\(gateway.port)/readyz").0) == 200 }
            let relay = try await TCPRelay.start(to: gateway.port)
            defer { Task { await relay.stop() } }
            let slow = try await TestClient.connect(port: relay.port, user: "slow")
            let publisher = try await TestClient.connect(port: server.port, user: "pub")
            try await slow.ack("join", ["room": "firehose"])
            try await relay.setServerReading(false)
            let body = String(repeating: "x", count: 3500)
            var total = 0
            // Until the upstream cuts the stream off: its outbox, the HTTP/2 window and the
            // sockets' buffers fill up in turn. Bounded.
            while total < 6000 {
                total += 1
                try await publisher.ack("message", ["room": "firehose", "content": "\(total) \(body)"])
                if total % 250 == 0, let cut = try? await scrape(port: server.port)["parley_slow_consumers_total"], cut >= 1 { break }
            }
            #expect(try await scrape(port: server.port)["parley_slow_consumers_total"] ?? 0 >= 1, "never cut off after \(total) messages")
            try await relay.setServerReading(true)
            var seqs: [Int] = []
            while let frame = try await slow.next(timeout: .seconds(10)) {
                if frame["event"].string == "message", let seq = frame["data"]["seq"].int { seqs.append(seq) }
            }
            #expect(await slow.closed(timeout: .seconds(15)) == 1013)
            #expect(seqs == Array(1...max(seqs.count, 1)).prefix(seqs.count).map { $0 }, "a gapless prefix arrived before the cut")
            let again = try await TestClient.connect(port: gateway.port, user: "slow")
            try await again.ack("join", ["room": "firehose", "since": seqs.last ?? 0])
            let rest = try await again.messages(total - seqs.count, room: "firehose", timeout: .seconds(60)).compactMap { $0["seq"].int }
            #expect(rest == Array((seqs.count + 1)...total))
        }
    }

    @Test("an upstream killed mid-traffic: its clients are closed with 1012, resume through the gateway on the other instance, and miss or repeat nothing", .enabled(if: clusterTestsEnabled, "needs redis-server and PostgreSQL"))
    func upstreamKilled() async throws {
        let backends = try await ClusterBackends.start()
        defer { backends.stop() }
        let a = try await ServerProcess.start(backends.arguments + ["--instance-id", "alpha"])
        let b = try await ServerProcess.start(backends.arguments + ["--instance-id", "beta"])
        let gateway = try await ServerProcess.startGateway(["--upstream", "127.0.0.1:\(a.grpcPort),127.0.0.1:\(b.grpcPort)"])
        defer {
            gateway.kill(SIGTERM)
            a.kill(SIGKILL)
            b.kill(SIGTERM)
        }
        try await waitUntil(timeout: .seconds(10), every: .milliseconds(50)) {
            (try? await Self.get("http://127.0.0.1:\(gateway.port)/readyz").1.hasPrefix("ready: 2")) ?? false
        }
        let total = 150
        let room = "live"
        let closes = AsyncQueue<Int>()
        let joinedOnce = AsyncQueue<Int>()

        /// Follows the room through the gateway, reconnecting and resuming after each close.
        @Sendable func follow(_ index: Int) async throws -> [Int] {
            var seqs: [Int] = []
            var connects = 0
            while seqs.count < total, connects < 10 {
                connects += 1
                guard let client = try? await TestClient.connect(port: gateway.port, user: "sub\(index)") else {
                    try await Task.sleep(for: .milliseconds(200))
                    continue
                }
                guard (try? await client.ack("join", ["room": room, "since": seqs.last ?? 0])) != nil else {
                    client.close()
                    try await Task.sleep(for: .milliseconds(200))
                    continue
                }
                if connects == 1 { joinedOnce.push(index) }
                seqs += try await client.messages(total - seqs.count, room: room, timeout: .seconds(60)).compactMap { $0["seq"].int }
                if seqs.count < total, let code = await client.closed(timeout: .seconds(1)) { closes.push(code) }
                client.close()
            }
            return seqs
        }

        let followers = (0..<6).map { index in Task { try await follow(index) } }
        for _ in 0..<6 { _ = try #require(await joinedOnce.pop(timeout: .seconds(20))) }
        // The publisher talks to the instance that stays.
        let publisher = try await TestClient.connect(port: b.port, user: "pub")
        for index in 1...total {
            try await publisher.ack("message", ["room": room, "content": "m\(index)"])
            if index == total / 3 { a.kill(SIGKILL) }
        }
        for follower in followers {
            let seqs = try await follower.value
            #expect(seqs == Array(1...total), "a follower saw \(seqs.count) messages: \(seqs.prefix(20))...")
        }
        // Half of the followers were on the killed instance: they were closed with 1012.
        var codes: [Int] = []
        while let code = await closes.pop(timeout: .milliseconds(100)) { codes.append(code) }
        #expect(codes.count >= 1 && codes.allSatisfy { $0 == 1012 }, "close codes: \(codes)")
        let (_, metrics) = try await Self.get("http://127.0.0.1:\(gateway.port)/ws-metrics")
        #expect(metrics.contains("parley_gateway_upstream_up{upstream=\"127.0.0.1:\(a.grpcPort)\"} 0"))
        #expect(!metrics.contains("parley_gateway_upstream_errors_total 0"))
    }

    @Test("an upstream served over TLS (--grpc-tls-cert): reached with its CA; another CA's certificate or plaintext reaches nothing")
    func upstreamTLS() async throws {
        let certificates = try await TestCertificates.make()
        let server = try await ServerProcess.start([
            "--data-dir", temporaryDirectory(), "--grpc-tls-cert", certificates.certificateFile, "--grpc-tls-key", certificates.keyFile,
        ])
        let gateway = try await ServerProcess.startGateway(["--upstream", "localhost:\(server.grpcPort)", "--upstream-ca-file", certificates.caFile])
        let wrongCA = try await ServerProcess.startGateway(["--upstream", "localhost:\(server.grpcPort)", "--upstream-ca-file", certificates.otherCAFile])
        let plaintext = try await ServerProcess.startGateway(["--upstream", "localhost:\(server.grpcPort)"])
        defer {
            for process in [gateway, wrongCA, plaintext, server] { process.kill(SIGTERM) }
        }
        try await waitUntil(timeout: .seconds(10), every: .milliseconds(50)) { (try? await Self.get("http://127.0.0.1:\(gateway.port)/readyz").0) == 200 }
        let alice = try await TestClient.connect(port: gateway.port, user: "alice")
        try await alice.ack("join", ["room": "secure"])
        let sent = try await alice.ack("message", ["room": "secure", "content": "over TLS"])
        #expect(try await alice.messages(1, room: "secure").first?["id"].string == sent["id"].string)
        // No upstream is ever live for these: a client is closed with 1013 after the wait.
        let clients = try await [TestClient.connect(port: wrongCA.port, user: "bob"), TestClient.connect(port: plaintext.port, user: "carol")]
        async let first = clients[0].closed(timeout: .seconds(15))
        async let second = clients[1].closed(timeout: .seconds(15))
        #expect(await [first, second] == [1013, 1013])
        for other in [wrongCA, plaintext] { #expect(try await Self.get("http://127.0.0.1:\(other.port)/readyz").0 == 503) }
    }

    @Test("more clients than one HTTP/2 connection carries streams (100): the gateway opens more connections to the upstream")
    func manyStreams() async throws {
        let (server, gateway) = try await Self.serverAndGateway(["--storage", "memory", "--rate-per-sec", "0"])
        defer {
            gateway.kill(SIGTERM)
            server.kill(SIGTERM)
        }
        let clients = try await withThrowingTaskGroup(of: TestClient.self) { group in
            for index in 0..<250 {
                group.addTask {
                    let client = try await TestClient.connect(port: gateway.port, user: "u\(index)")
                    try await client.ack("join", ["room": "crowd"])
                    return client
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        let publisher = try await TestClient.connect(port: server.port, user: "pub")
        let sent = try await publisher.ack("message", ["room": "crowd", "content": "to all 250"])
        for client in clients {
            let got = try await client.expect("message") { $0["room"].string == "crowd" }
            #expect(got["id"].string == sent["id"].string)
        }
        let (_, metrics) = try await Self.get("http://127.0.0.1:\(gateway.port)/ws-metrics")
        #expect(metrics.contains("parley_gateway_connections 250"), "\(metrics.prefix(400))")
        for client in clients { client.close() }
    }

    @Test("a gateway shutting down (SIGTERM) closes its WebSockets and Socket.IO sessions going away (1001), so that clients reconnect through another, and exits 0")
    func shutdown() async throws {
        let (server, gateway) = try await Self.serverAndGateway(["--storage", "memory"])
        defer {
            gateway.kill(SIGKILL)
            server.kill(SIGTERM)
        }
        let client = try await TestClient.connect(port: gateway.port, user: "alice")
        try await client.ack("join", ["room": "r"])
        let socketIO = try await TestClient.connect(port: gateway.port, path: "/socket.io/", query: "?EIO=4&transport=websocket", name: "sio")
        #expect(await socketIO.nextText()?.hasPrefix("0{") == true)
        socketIO.sendText("40{\"user\":\"bob\"}")
        #expect(await socketIO.nextText()?.hasPrefix("40{\"sid\"") == true)
        gateway.kill(SIGTERM)
        #expect(await client.closed() == 1001)
        #expect(await socketIO.closed() == 1001)
        #expect(await gateway.waitForExit(timeout: .seconds(10)) == 0)
    }

    @Test("the gateway counts connections per client address (the upstream sees only the gateway's): over the limit, a WebSocket is closed with 1013 and why, polling gets 429")
    func connectionLimits() async throws {
        let (server, gateway) = try await Self.serverAndGateway(["--storage", "memory"], gateway: ["--max-connections-per-ip", "2"])
        defer {
            gateway.kill(SIGTERM)
            server.kill(SIGTERM)
        }
        let first = try await TestClient.connect(port: gateway.port, user: "a")
        let socketIO = try await TestClient.connect(port: gateway.port, path: "/socket.io/", query: "?EIO=4&transport=websocket", name: "sio")
        #expect(await socketIO.nextText()?.hasPrefix("0{") == true)
        // Connected, so that the upstream's handshake deadline cannot end it during the test.
        socketIO.sendText("40{\"user\":\"b\"}")
        #expect(await socketIO.nextText()?.hasPrefix("40{\"sid\"") == true)
        // Read off the wire: the 101, then a close frame with 1013 and why.
        for path in ["/ws?user=c", "/socket.io/?EIO=4&transport=websocket"] {
            let (code, reason) = try await Self.closeAfterUpgrade(port: gateway.port, path: path)
            #expect(code == 1013 && reason.contains("too many connections"), "\(path): \(String(describing: code)) \(reason)")
        }
        let polling = try await rawHTTP(port: gateway.port, .GET, "/socket.io/?EIO=4&transport=polling")
        #expect(polling.status == 429 && polling.json["error"]["code"].string == "rate_limited", "\(polling.status) \(polling.body)")
        // A slot given back is taken again.
        first.close()
        try await waitUntil(timeout: .seconds(10), every: .milliseconds(50)) {
            (try? await rawHTTP(port: gateway.port, .GET, "/ws?user=d", headers: upgradeHeaders(), untilHead: true).status) == 101
        }
        socketIO.close()
    }

    /// Upgrades `path` by hand and reads the close frame that follows the 101: its code and reason.
    static func closeAfterUpgrade(port: Int, path: String) async throws -> (Int?, String) {
        let socket = try await RawSocket.connect(port: port)
        defer { Task { await socket.close() } }
        let headers = upgradeHeaders().map { "\($0.0): \($0.1)\r\n" }.joined()
        try await socket.send("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n\(headers)\r\n")
        var bytes: [UInt8] = []
        while let chunk = await socket.readBytes(timeout: .seconds(10)), !chunk.isEmpty {
            bytes += chunk
            guard let end = bytes.firstRange(of: Array("\r\n\r\n".utf8))?.upperBound, bytes.count >= end + 2 else { continue }
            let head = String(decoding: bytes[..<end], as: UTF8.self)
            guard head.hasPrefix("HTTP/1.1 101") else { return (nil, head) }
            let frame = Array(bytes[end...])
            let length = Int(frame[1] & 0x7F)
            guard frame[0] == 0x88, length >= 2, frame.count >= 2 + length else { continue }
            return (Int(frame[2]) << 8 | Int(frame[3]), String(decoding: frame[4..<(2 + length)], as: UTF8.self))
        }
        return (nil, String(decoding: bytes, as: UTF8.self))
    }

    /// Valid Engine.IO and Socket.IO packets, for mutation.
    static let socketIOPackets = [
        "40{\"user\":\"fuzz\"}", "421[\"join\",{\"room\":\"r\"}]", "422[\"message\",{\"room\":\"r\",\"content\":\"hi @bob\"}]",
        "42[\"typing\",{\"room\":\"r\",\"typing\":true}]", "423[\"search\",{\"text\":\"hi\"}]", "424[\"rooms\",{}]",
        "425[\"dm\",{\"user\":\"bob\"}]", "426[\"history\",{\"room\":\"r\",\"limit\":3}]", "427[\"leave\",{\"room\":\"r\"}]",
        "451-6[\"message\",{\"_placeholder\":true,\"num\":0}]", "41", "3", "2", "6", "5", "2probe", "40/admin,", "43/x,7[]",
        "40{\"user\":\"fuzz\",\"pid\":\"p\",\"offset\":\"r=0,s=9\"}",
    ]

    @Test("thousands of mutated Socket.IO packets through the gateway, over WebSockets and polling, to an upstream on the default SQLite store: answered or closed, neither process falls, the store is untouched")
    func socketIOFuzz() async throws {
        let (server, gateway) = try await Self.serverAndGateway(["--data-dir", temporaryDirectory(), "--rate-per-sec", "0"], gateway: ["--ping-interval", "2"])
        defer {
            gateway.kill(SIGTERM)
            server.kill(SIGTERM)
        }
        let owner = try await TestClient.connect(port: server.port, user: "owner")
        try await owner.ack("join", ["room": "keep"])
        for index in 1...3 { try await owner.ack("message", ["room": "keep", "content": "kept \(index)"]) }
        let (_, before) = try await Self.get("http://127.0.0.1:\(server.port)/api/rooms/keep/messages")
        owner.close()

        var mutator = Mutator(random: SeededRandom(seed: 0x6A7E_50C1))
        func packet(_ mutator: inout Mutator) -> String {
            let text = mutator.random.pick(Self.socketIOPackets)
            return mutator.random.chance(0.7) ? mutator.mutate(text) : text
        }
        // WebSockets: 20 sessions of 100 packets each, some binary; whatever comes back is read.
        for round in 0..<20 {
            let socket = try await TestClient.connect(port: gateway.port, path: "/socket.io/", query: "?EIO=4&transport=websocket", name: "fuzz\(round)")
            let open = await socket.nextText()
            #expect(open?.hasPrefix("0{\"sid\":") == true, "\(String(describing: open))")
            socket.sendText(Self.socketIOPackets[0])
            for _ in 0..<100 {
                if mutator.random.chance(0.05) {
                    socket.sendFrame(.binary(ByteBuffer(bytes: [1, 2, 3])))
                } else {
                    socket.sendText(packet(&mutator))
                }
            }
            while await socket.nextText(timeout: .milliseconds(100)) != nil {}
            socket.close()
        }
        // Polling: 30 sessions, each a POST of up to 20 packets in one payload and a GET.
        for _ in 0..<30 {
            let opened = try await rawHTTP(port: gateway.port, .GET, "/socket.io/?EIO=4&transport=polling")
            #expect(opened.status == 200 && opened.body.hasPrefix("0{"), "\(opened.body)")
            guard let sid = (try? JSON.parse(String(opened.body.dropFirst())))?["sid"].string else { continue }
            let payload = (0..<Int.random(in: 1...20, using: &mutator.random)).map { _ in packet(&mutator) }.joined(separator: "\u{1E}")
            let posted = try await rawHTTP(port: gateway.port, .POST, "/socket.io/?EIO=4&transport=polling&sid=\(sid)", body: payload)
            #expect([200, 400, 413].contains(posted.status), "POST \(payload.debugDescription): \(posted.status) \(posted.body)")
            if posted.status == 400 { #expect(posted.json["code"].int != nil, "\(posted.body)") }
            let got = try await rawHTTP(port: gateway.port, .GET, "/socket.io/?EIO=4&transport=polling&sid=\(sid)", timeout: .seconds(10))
            #expect([200, 400].contains(got.status), "GET after \(payload.debugDescription): \(got.status) \(got.body)")
        }

        // Both processes serve on: a new Socket.IO session through the gateway chats, and the
        // history no fuzzed packet was meant to reach is as it was.
        let gatewayExit = await gateway.waitForExit(timeout: .milliseconds(1))
        let serverExit = await server.waitForExit(timeout: .milliseconds(1))
        #expect(gatewayExit == nil && serverExit == nil)
        let fresh = try await TestClient.connect(port: gateway.port, path: "/socket.io/", query: "?EIO=4&transport=websocket", name: "fresh")
        _ = await fresh.nextText()
        fresh.sendText("40{\"user\":\"zed\"}")
        fresh.sendText("421[\"join\",{\"room\":\"after\"}]")
        var answers: [String] = []
        while let text = await fresh.nextText(timeout: .seconds(10)) {
            answers.append(text)
            if text.hasPrefix("431[") { break }
        }
        #expect(answers.last?.hasPrefix("431[{\"room\":\"after\"") == true, "\(answers)")
        fresh.close()
        let (_, after) = try await Self.get("http://127.0.0.1:\(server.port)/api/rooms/keep/messages")
        #expect(after == before)
    }
}
