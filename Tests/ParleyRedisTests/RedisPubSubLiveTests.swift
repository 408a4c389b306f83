import NIOCore
import Testing

@testable import ParleyRedis

@Suite("Pub/sub against a real redis-server", .enabled(if: RedisServerProcess.isAvailable), .timeLimit(.minutes(1)))
struct RedisPubSubLiveTests {
    @Test(arguments: [RedisConfiguration.ProtocolVersion.resp2, .resp3])
    func channelsAndPatternsAcrossTwoConnections(version: RedisConfiguration.ProtocolVersion) async throws {
        try await withRedisServer { server in
            var configuration = server.configuration
            configuration.protocolVersion = version
            let events = EventRecorder()
            let subscriber = RedisSubscriber(configuration: configuration, onEvent: events.record)
            let publisher = try await RedisConnection.connect(configuration: configuration)
            try await withRunning(subscriber) {
                try await events.wait(for: 1, .connected)
                try await subscriber.subscribe(channels: ["room:1"], patterns: ["user:*"]) { subscription async throws in
                    #expect(try await publisher.send("PUBLISH", "room:1", "hello").int == 1)
                    #expect(try await publisher.send("PUBLISH", "user:7", "psst").int == 1)
                    #expect(try await publisher.send("PUBLISH", "elsewhere", "nobody").int == 0)
                    var messages = subscription.messages.makeAsyncIterator()
                    let first = await messages.next()
                    let second = await messages.next()
                    #expect(first?.channel == "room:1")
                    #expect(first?.payloadString == "hello")
                    #expect(first?.pattern == nil)
                    #expect(second?.channel == "user:7")
                    #expect(second?.pattern == "user:*")
                    #expect(second?.payloadString == "psst")
                }
                // Leaving the scope unsubscribed on the server.
                #expect(await subscriber.subscriptionCount == 0)
                #expect(try await publisher.send("PUBLISH", "room:1", "late").int == 0)
                #expect(try await publisher.send("PUBLISH", "user:7", "late").int == 0)
            }
            await publisher.close()
        }
    }

    @Test func twoSubscriptionsShareAChannelUntilBothLeave() async throws {
        try await withRedisServer { server in
            let events = EventRecorder()
            let subscriber = RedisSubscriber(configuration: server.configuration, onEvent: events.record)
            let publisher = try await RedisConnection.connect(configuration: server.configuration)
            try await withRunning(subscriber) {
                try await events.wait(.connected)
                try await subscriber.subscribe(channels: ["shared"]) { outer async throws in
                    try await subscriber.subscribe(channels: ["shared"]) { inner async throws in
                        _ = try await publisher.send("PUBLISH", "shared", "both")
                        var innerMessages = inner.messages.makeAsyncIterator()
                        #expect(await innerMessages.next()?.payloadString == "both")
                    }
                    // The inner scope ended; the outer subscription still receives.
                    #expect(try await publisher.send("PUBLISH", "shared", "outer").int == 1)
                    var outerMessages = outer.messages.makeAsyncIterator()
                    #expect(await outerMessages.next()?.payloadString == "both")
                    #expect(await outerMessages.next()?.payloadString == "outer")
                }
                #expect(try await publisher.send("PUBLISH", "shared", "gone").int == 0)
            }
            await publisher.close()
        }
    }

    @Test func aSlowConsumerLosesOnlyItsOwnOverflowAndIsTold() async throws {
        try await withRedisServer { server in
            var configuration = server.configuration
            configuration.subscriptionBufferSize = 10
            let events = EventRecorder()
            let subscriber = RedisSubscriber(configuration: configuration, onEvent: events.record)
            let publisher = try await RedisConnection.connect(configuration: configuration)
            try await withRunning(subscriber) {
                try await events.wait(.connected)
                try await subscriber.subscribe(channels: ["busy"]) { subscription async throws in
                    let published = await publisher.pipeline((0..<50).map { RESPCommand("PUBLISH", "busy", "m\($0)") })
                    #expect(published.allSatisfy { (try? $0.get().int) == 1 })
                    var received: [String] = []
                    var dropped = 0
                    for await event in subscription {
                        switch event {
                        case .message(let message): received.append(message.payloadString)
                        case .dropped(let count): dropped += count
                        case .reconnected: Issue.record("unexpected reconnection")
                        }
                        if received.count + dropped >= 50 { break }
                    }
                    #expect(received.prefix(10) == ArraySlice((0..<10).map { "m\($0)" }))
                    #expect(dropped > 0)
                    #expect(received.count + dropped == 50)
                }
            }
            await publisher.close()
        }
    }
}
