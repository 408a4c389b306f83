import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
@testable import ParleyServer
import Testing

/// Reads `/metrics` into `series -> value`, e.g. `parley_connections{transport="websocket"}`.
func scrape(_ server: TestServer) async throws -> [String: Double] {
    try await scrape(port: server.port)
}

func scrape(_ server: ServerProcess) async throws -> [String: Double] {
    try await scrape(port: server.port)
}

func scrape(port: Int) async throws -> [String: Double] {
    let (data, _) = try await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(port)/metrics")!)
    var values: [String: Double] = [:]
    for line in String(decoding: data, as: UTF8.self).split(separator: "\n") where !line.hasPrefix("#") {
        guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
        values[String(line[..<space])] = value
    }
    return values
}

@Suite("Prometheus metrics")
struct MetricsTests {
    @Test("metrics follow connections, joins, publishes and errors")
    func metricsFollowActivity() async throws {
        // A closed SSE stream is noticed at its next write: keep heartbeats short here.
        try await withServer({ $0.sseHeartbeat = .milliseconds(100) }) { server in
            let idle = try await scrape(server)
            #expect(idle["parley_connections{transport=\"websocket\"}"] == 0)
            #expect(idle["parley_build_info{version=\"\(ParleyServer.version)\"}"] == 1)
            #expect(idle["parley_backend_up{backend=\"sqlite\"}"] == 1)

            let alice = try await TestClient.connect(port: server.port, user: "alice")
            let bob = try await TestClient.connect(port: server.port, user: "bob")
            let sse = try await SSEClient.open(port: server.port, path: "/rooms/r/events?user=carol")
            try await alice.ack("join", ["room": "r"])
            try await bob.ack("join", ["room": "r"])
            try await alice.ack("join", ["room": "other"])
            for index in 1...5 { try await alice.ack("message", ["room": "r", "content": "m\(index)"]) }
            _ = try await bob.messages(5, room: "r")
            alice.sendText("not json")
            _ = try await alice.expect("error")

            let busy = try await scrape(server)
            #expect(busy["parley_connections{transport=\"websocket\"}"] == 2)
            #expect(busy["parley_connections{transport=\"sse\"}"] == 1)
            #expect(busy["parley_rooms"] == 2)
            #expect(busy["parley_members"] == 4)
            #expect(busy["parley_messages_published_total"] == 5)
            #expect(busy["parley_messages_delivered_total"] == 15)  // 5 messages x 3 members of r
            #expect(busy["parley_store_append_seconds_count"] == 5)
            #expect((busy["parley_delivery_latency_seconds_count"] ?? 0) >= 10)
            #expect((busy["parley_broker_received_total"] ?? 0) >= 5)
            #expect(busy["parley_errors_total{code=\"bad_request\"}"] == 1)

            alice.close()
            bob.close()
            sse.close()
            try await waitUntil {
                let metrics = try await scrape(server)
                return metrics["parley_connections{transport=\"websocket\"}"] == 0 && metrics["parley_connections{transport=\"sse\"}"] == 0
            }
            let after = try await scrape(server)
            #expect(after["parley_members"] == 0)
            #expect(after["parley_rooms"] == 0)
        }
    }

    @Test("rate-limited publishes and slow consumers cut off are counted")
    func metricsCountLimits() async throws {
        try await withServer({ $0.limits.ratePerSecond = 0.2; $0.limits.rateBurst = 1; $0.limits.maxOutboxBytes = 1 << 18; $0.pingInterval = .seconds(600) }) { server in
            let alice = try await TestClient.connect(port: server.port, user: "alice")
            // bob reads through a relay that can stop reading from the server.
            let relay = try await TCPRelay.start(to: server.port)
            defer { Task { await relay.stop() } }
            let bob = try await TestClient.connect(port: relay.port, user: "bob")
            try await bob.ack("join", ["room": "r"])
            try await alice.ack("message", ["room": "r", "content": "first"])
            let limited = try await alice.request("message", ["room": "r", "content": "over the burst"])
            #expect(limited["data"]["code"].string == "rate_limited")
            #expect(try await scrape(server)["parley_rate_limited_total"] == 1)
            #expect(try await scrape(server)["parley_errors_total{code=\"rate_limited\"}"] == 1)

            // bob stops reading while backends flood the room (~10 MB, more than the socket
            // buffers hold): he is cut off. Each post is its own user, so none is rate limited.
            try await relay.setServerReading(false)
            let body = String(repeating: "y", count: 3500)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for worker in 0..<8 {
                    group.addTask {
                        for index in stride(from: worker, to: 3000, by: 8) {
                            _ = try await http("POST", server.url("/api/rooms/r/messages"), body: #"{"content":"\#(index) \#(body)","user":"flood\#(index)"}"#)
                        }
                    }
                }
                try await group.waitForAll()
            }
            try await relay.setServerReading(true)
            #expect(await bob.closed(timeout: .seconds(20)) == 1013)
            try await waitUntil { try await scrape(server)["parley_slow_consumers_total"] == 1 }
            #expect(try await scrape(server)["parley_rate_limited_total"] == 1)
        }
    }
}

@Suite("parley bench")
struct BenchToolTests {
    @Test(
        "a short bench against a live server reports zero loss and plausible numbers",
        arguments: ["websocket", "grpc"]
    )
    func benchReport(subscribers: String) async throws {
        // The report's accounting, not the disk: a memory store keeps a loaded machine's fsyncs
        // from stretching acks past the bench's drain.
        try await withServer({
            $0.limits.ratePerSecond = 0
            $0.storage = .memory
        }) { server in
            let grpc = subscribers == "grpc" ? ["--grpc", "127.0.0.1:\(server.grpcPort)"] : []
            let result = try await runToCompletion(
                ServerProcess.executable,
                [
                    "bench", "--url", "ws://127.0.0.1:\(server.port)/ws", "--connections", "20", "--rooms", "2",
                    "--publishers", "2", "--duration", "2", "--json",
                ] + grpc,
                includeErrors: false, timeout: .seconds(60)
            )
            #expect(result.status == 0)
            let report = try JSON.parse(result.output)
            let acked = try #require(report["acked"].int)
            #expect(acked > 10)
            #expect(report["publishErrors"].int == 0)
            #expect(report["lost"].int == 0)
            #expect(report["outOfOrder"].int == 0)
            #expect(report["duplicates"].int == 0)
            #expect(report["disconnects"].int == 0)
            // Every acked message reached the 10 subscribers of its room.
            #expect(report["deliveries"].int == acked * 10)
            let p50 = try #require(report["deliveryLatency"]["p50"].number)
            let max = try #require(report["deliveryLatency"]["max"].number)
            #expect(p50 > 0 && p50 <= max && max < 10_000)
            let history = try await http("GET", server.url("/api/rooms"))
            #expect(history.json["rooms"].array?.compactMap { $0["seq"].int }.reduce(0, +) == acked)
        }
    }

    @Test("bench-store appends to a fresh SQLite store and reports its rate", arguments: [1, 8])
    func benchStore(publishers: Int) async throws {
        let directory = NSTemporaryDirectory() + "parley-bench-store-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let result = try await runToCompletion(
            ServerProcess.executable,
            ["bench-store", "--publishers", "\(publishers)", "--duration", "1", "--synchronous", "normal", "--data-dir", directory],
            timeout: .seconds(60)
        )
        #expect(result.status == 0, "\(result.output)")
        let rate = result.output.firstMatch(of: /(\d+) appends\/s \((\d+) in/)
        #expect(rate.map { Int($0.1)! > 0 && Int($0.2)! > 0 } == true, "\(result.output)")
    }
}
