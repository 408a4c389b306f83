import NIOCore
import Testing

@testable import ParleyRedis

@Suite("Reconnection after a redis-server restart", .enabled(if: RedisServerProcess.isAvailable), .timeLimit(.minutes(1)))
struct RedisReconnectTests {
    @Test(arguments: [RedisConfiguration.ProtocolVersion.resp2, .resp3])
    func restoresAuthSelectAndSubscriptions(version: RedisConfiguration.ProtocolVersion) async throws {
        try await withRedisServer(password: "pw") { server in
            var configuration = server.configuration
            configuration.protocolVersion = version
            configuration.database = 2
            let clientEvents = EventRecorder()
            let subscriberEvents = EventRecorder()
            let client = RedisClient(configuration: configuration, onEvent: clientEvents.record)
            let subscriber = RedisSubscriber(configuration: configuration, onEvent: subscriberEvents.record)
            try await withRunning(client) {
                try await withRunning(subscriber) {
                    try await clientEvents.wait(.connected)
                    try await subscriberEvents.wait(.connected)
                    try await subscriber.subscribe(channels: ["room:1"], patterns: ["user:*"]) { subscription async throws in
                        var events = subscription.makeAsyncIterator()
                        _ = try await client.send("PUBLISH", "room:1", "before")
                        #expect(await events.next() == .message(RedisMessage(channel: "room:1", payload: ByteBuffer(string: "before"))))

                        server.kill()
                        // While it is down, commands fail cleanly instead of hanging: at once when the
                        // client already saw the connection go, else by their own timeout (a loaded
                        // machine may not have delivered the close within the 200 ms).
                        let error = await #expect(throws: RedisError.self) {
                            try await client.send(RESPCommand("PING"), timeout: .milliseconds(200))
                        }
                        let clean: [RedisError.Code] = [.unavailable, .connectionClosed, .connectionFailed, .timeout]
                        #expect(error.map { clean.contains($0.code) } == true, "\(String(describing: error))")

                        try await server.launch()
                        try await clientEvents.wait(.reconnected)
                        try await subscriberEvents.wait(.reconnected)
                        #expect(await events.next() == .reconnected)

                        // AUTH and SELECT were restored: the client writes into database 2.
                        _ = try await client.send("SET", "after-restart", "yes")
                        var probe = server.configuration
                        probe.database = 2
                        let inTwo = try await RedisConnection.connect(configuration: probe)
                        #expect(try await inTwo.send("GET", "after-restart").string == "yes")
                        await inTwo.close()

                        // Both subscriptions receive again.
                        #expect(try await client.send("PUBLISH", "room:1", "after").int == 1)
                        #expect(try await client.send("PUBLISH", "user:9", "hi").int == 1)
                        let after = await events.next()
                        let pattern = await events.next()
                        #expect(after == .message(RedisMessage(channel: "room:1", payload: ByteBuffer(string: "after"))))
                        #expect(pattern == .message(RedisMessage(channel: "user:9", pattern: "user:*", payload: ByteBuffer(string: "hi"))))
                    }
                }
            }
            #expect(clientEvents.count { if case .disconnected = $0 { true } else { false } } >= 1)
        }
    }

    @Test func aSubscriptionMadeWhileDisconnectedStartsWithReconnected() async throws {
        try await withRedisServer { server in
            let events = EventRecorder()
            let subscriber = RedisSubscriber(configuration: server.configuration, onEvent: events.record)
            let publisher = try await RedisConnection.connect(configuration: server.configuration)
            // Not running yet: no connection. The body starts at once.
            let subscribed = Task {
                try await subscriber.subscribe(channels: ["early"]) { subscription async throws in
                    var iterator = subscription.makeAsyncIterator()
                    let first = await iterator.next()
                    let second = await iterator.next()
                    return (first, second)
                }
            }
            try await Task.sleep(for: .milliseconds(50))
            try await withRunning(subscriber) {
                try await events.wait(.connected)
                _ = try await publisher.send("PUBLISH", "early", "now")
                let (first, second) = try await subscribed.value
                #expect(first == .reconnected)
                #expect(second == .message(RedisMessage(channel: "early", payload: ByteBuffer(string: "now"))))
            }
            await publisher.close()
        }
    }
}
