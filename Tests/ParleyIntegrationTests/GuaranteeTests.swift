import Foundation
@testable import ParleyServer
import ParleyTestSupport
import Testing

@Suite("Delivery guarantees")
struct GuaranteeTests {
    /// SQLite in a fresh folder with the rate limit off: the store whose group commit
    /// completes appends together and so hands the hub messages out of order.
    static func sqlite(_ configuration: inout ServerConfiguration) {
        configuration.storage = .sqlite
        configuration.dataDirectory = temporaryDirectory()
        configuration.limits.ratePerSecond = 0
    }

    @Test("every member gets a room's messages in seq order, gapless, under concurrent publishers")
    func concurrentPublishersOrder() async throws {
        try await withServer(Self.sqlite) { server in
            let members = try await (0..<3).asyncMap { try await TestClient.connect(port: server.port, user: "member\($0)") }
            for member in members { try await member.ack("join", ["room": "busy"]) }
            let publishers = 8, perPublisher = 60
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<publishers {
                    group.addTask {
                        let publisher = try await TestClient.connect(port: server.port, user: "pub\(index)")
                        for count in 0..<perPublisher {
                            try await publisher.ack("message", ["room": "busy", "content": "p\(index)-\(count)"])
                        }
                    }
                }
                try await group.waitForAll()
            }
            let total = publishers * perPublisher
            for member in members {
                let seqs = try await member.messages(total, room: "busy").compactMap { $0["seq"].int }
                #expect(seqs == Array(1...total), "\(member.name) got \(seqs.count) messages")
            }
        }
    }

    @Test("join with since replays then goes live with no gap or duplicate at the seam")
    func resumeSeam() async throws {
        try await withServer(Self.sqlite) { server in
            let publisher = try await TestClient.connect(port: server.port, user: "pub")
            let total = 400
            let publishing = Task {
                for index in 1...total {
                    try await publisher.ack("message", ["room": "flow", "content": "m\(index)"])
                }
            }
            // Join twice while messages keep flowing: from the start and from a midpoint.
            let observer = try await TestClient.connect(port: server.port, user: "observer")
            func stored() async throws -> Int {
                try await observer.ack("history", ["room": "flow", "limit": 1])["messages"][0]["seq"].int ?? 0
            }
            // Bounds are generous: 400 fsynced commits on a loaded 2-core machine take a while.
            // Polled within the connection's command budget (20 a second), or the poll is refused.
            try await waitUntil(timeout: .seconds(60), every: .milliseconds(100)) { try await stored() >= 100 }
            let early = try await TestClient.connect(port: server.port, user: "early")
            let ack = try await early.ack("join", ["room": "flow", "since": 0])
            #expect(ack["seq"].int ?? 0 >= 100)
            try await waitUntil(timeout: .seconds(60), every: .milliseconds(100)) { try await stored() >= 200 }
            let late = try await TestClient.connect(port: server.port, user: "late")
            try await late.ack("join", ["room": "flow", "since": 150])
            try await publishing.value

            let earlySeqs = try await early.messages(total, room: "flow").compactMap { $0["seq"].int }
            #expect(earlySeqs == Array(1...total))
            let lateSeqs = try await late.messages(total - 150, room: "flow").compactMap { $0["seq"].int }
            #expect(lateSeqs == Array(151...total))
            #expect(try await late.drain(for: .milliseconds(300)).filter { $0["event"].string == "message" }.isEmpty)
        }
    }

    @Test("a client that reconnects with its last seq misses nothing")
    func reconnectResume() async throws {
        try await withServer(Self.sqlite) { server in
            let publisher = try await TestClient.connect(port: server.port, user: "pub")
            var reader = try await TestClient.connect(port: server.port, user: "reader")
            try await reader.ack("join", ["room": "r"])
            for index in 1...20 { try await publisher.ack("message", ["room": "r", "content": "a\(index)"]) }
            let first = try await reader.messages(20, room: "r").compactMap { $0["seq"].int }
            #expect(first == Array(1...20))
            reader.close()
            for index in 21...50 { try await publisher.ack("message", ["room": "r", "content": "b\(index)"]) }
            reader = try await TestClient.connect(port: server.port, user: "reader")
            try await reader.ack("join", ["room": "r", "since": 20])
            for index in 51...60 { try await publisher.ack("message", ["room": "r", "content": "c\(index)"]) }
            let rest = try await reader.messages(40, room: "r").compactMap { $0["seq"].int }
            #expect(rest == Array(21...60))
        }
    }

    @Test("a client that stops reading is cut off with 1013 while the others keep full speed")
    func slowConsumerCutOff() async throws {
        // 3,000 large messages as fast as they go: one heavy test at a time.
        try await withHeavyTestLock { try await runSlowConsumerCutOff() }
    }

    private func runSlowConsumerCutOff() async throws {
        // No server pings here: on a loaded machine the run can outlast a ping interval, and a
        // stalled socket that misses a pong is closed for that before its 1013 can be written.
        try await withServer({
            // About the hub and the outboxes, not the store: 3,000 acked publishes in a row
            // would otherwise wait for 3,000 fsyncs.
            $0.storage = .memory
            $0.limits.ratePerSecond = 0
            $0.limits.maxOutboxBytes = 1 << 20
            $0.pingInterval = .seconds(600)
        }) { server in
            // The slow client reads through a relay that stops reading from the server, so the
            // server's socket really backs up (a paused reader in this process might not).
            let relay = try await TCPRelay.start(to: server.port)
            defer { Task { await relay.stop() } }
            let slow = try await TestClient.connect(port: relay.port, user: "slow")
            let fast = try await TestClient.connect(port: server.port, user: "fast")
            let publisher = try await TestClient.connect(port: server.port, user: "pub")
            try await slow.ack("join", ["room": "firehose"])
            try await fast.ack("join", ["room": "firehose"])
            try await relay.setServerReading(false)

            let total = 3000
            let body = String(repeating: "x", count: 3500)
            // The deadline covers the whole publishing, which takes over a minute on a loaded CI
            // machine (it cut the fast reader short twice); "full speed" is the check below.
            let fastReceived = Task { try await fast.messages(total, room: "firehose", timeout: .seconds(240)) }
            let start = ContinuousClock.now
            for index in 1...total {
                try await publisher.ack("message", ["room": "firehose", "content": "\(index) \(body)"])
            }
            let published = ContinuousClock.now
            let fastSeqs = try await fastReceived.value.compactMap { $0["seq"].int }
            let delivered = ContinuousClock.now
            #expect(fastSeqs == Array(1...total))
            // The fast reader finished right behind the publisher: the slow one did not hold it up.
            #expect(delivered - published < .seconds(5), "published in \(published - start), delivered \(delivered - published) later")

            try await relay.setServerReading(true)
            var slowSeqs: [Int] = []
            while let frame = try await slow.next(timeout: .seconds(10)) {
                if let seq = frame["data"]["seq"].int, frame["event"].string == "message" { slowSeqs.append(seq) }
            }
            #expect(await slow.closed(timeout: .seconds(15)) == 1013)
            #expect(slowSeqs.count < total)
            #expect(slowSeqs == Array(1...slowSeqs.count).map { $0 }, "what arrived before the cut is a gapless prefix")

            // It may come back and resume where it stopped.
            let again = try await TestClient.connect(port: server.port, user: "slow")
            try await again.ack("join", ["room": "firehose", "since": slowSeqs.last ?? 0])
            let resumed = try await again.messages(total - slowSeqs.count, room: "firehose").compactMap { $0["seq"].int }
            #expect(resumed == Array((slowSeqs.count + 1)...total))
        }
    }

    @Test("an acked message survives SIGKILL right after the ack, and seq continues")
    func durableAck() async throws {
        let data = temporaryDirectory()
        let arguments = ["--data-dir", data, "--rate-per-sec", "0"]
        let server = try await ServerProcess.start(arguments)
        let acked = try await withThrowingTaskGroup(of: [JSON].self) { group in
            for index in 0..<4 {
                group.addTask {
                    let client = try await TestClient.connect(port: server.port, user: "w\(index)")
                    var acks: [JSON] = []
                    for count in 0..<50 {
                        let reply = try? await client.request("message", ["room": "durable", "content": "w\(index)-\(count)", "clientId": "w\(index)-\(count)"], timeout: .seconds(3))
                        guard let reply, reply["event"].string == "ack" else { break }
                        acks.append(reply["data"])
                        if index == 0, count == 30 { server.kill(SIGKILL) }
                    }
                    return acks
                }
            }
            return try await group.reduce(into: []) { $0 += $1 }
        }
        #expect(await server.waitForExit(timeout: .seconds(5)) != nil)
        #expect(acked.count >= 31)

        let restarted = try await ServerProcess.start(arguments)
        let reader = try await TestClient.connect(port: restarted.port, user: "reader")
        var stored: [JSON] = []
        var after = 0
        while true {
            let page = try await reader.ack("history", ["room": "durable", "after": after, "limit": 100])
            stored += page["messages"].array ?? []
            after = stored.last?["seq"].int ?? after
            if page["hasMore"].bool != true { break }
        }
        let storedIDs = Set(stored.compactMap { $0["id"].string })
        for ack in acked {
            #expect(storedIDs.contains(ack["id"].string ?? "?"), "acked \(ack) is missing after SIGKILL")
        }
        #expect(stored.compactMap { $0["seq"].int } == Array(1...max(stored.count, 1)).prefix(stored.count).map { $0 })
        let next = try await reader.ack("message", ["room": "durable", "content": "after restart"])
        #expect(next["seq"].int == stored.count + 1)
        restarted.kill(SIGTERM)
        _ = await restarted.waitForExit(timeout: .seconds(10))
    }

    @Test("SIGTERM closes WebSockets with 1001, finishes commits and exits cleanly")
    func gracefulShutdown() async throws {
        let data = temporaryDirectory()
        let server = try await ServerProcess.start(["--data-dir", data])
        let alice = try await TestClient.connect(port: server.port, user: "alice")
        try await alice.ack("join", ["room": "r"])
        let stored = try await alice.ack("message", ["room": "r", "content": "before shutdown"])
        server.kill(SIGTERM)
        #expect(await alice.closed(timeout: .seconds(5)) == 1001)
        #expect(await server.waitForExit(timeout: .seconds(10)) == 0)

        let restarted = try await ServerProcess.start(["--data-dir", data])
        let bob = try await TestClient.connect(port: restarted.port, user: "bob")
        let page = try await bob.ack("history", ["room": "r"])
        #expect(page["messages"][0] == stored)
        restarted.kill(SIGTERM)
        _ = await restarted.waitForExit(timeout: .seconds(10))
    }
}

extension Sequence {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var result: [T] = []
        for element in self { result.append(try await transform(element)) }
        return result
    }
}

/// Polls `condition` every 10 ms for up to `timeout`.
func waitUntil(timeout: Duration = .seconds(20), every interval: Duration = .milliseconds(10), _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: interval)
    }
    throw TestFailure("condition not met within \(timeout)")
}
