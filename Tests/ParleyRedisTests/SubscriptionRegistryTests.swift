import NIOCore
import Testing

@testable import ParleyRedis

@Suite("Subscription registry")
struct SubscriptionRegistryTests {
    @Test func sharedChannelsStaySubscribedUntilTheLastUserLeaves() {
        var registry = SubscriptionRegistry<String>()
        registry.add(id: 1, channels: ["a", "b", "a"], patterns: [], sink: "one")
        registry.add(id: 2, channels: ["b"], patterns: ["room:*"], sink: "two")
        #expect(registry.channels == ["a", "b"])
        #expect(registry.patterns == ["room:*"])

        let first = registry.remove(id: 1)
        #expect(first.sink == "one")
        #expect(first.channels == ["a"])
        #expect(first.patterns.isEmpty)

        let second = registry.remove(id: 2)
        #expect(second.channels == ["b"])
        #expect(second.patterns == ["room:*"])
        #expect(registry.isEmpty)
        #expect(registry.remove(id: 2).sink == nil)
    }

    @Test func routesByChannelOrByPattern() {
        var registry = SubscriptionRegistry<String>()
        registry.add(id: 1, channels: ["room:1"], patterns: [], sink: "channel")
        registry.add(id: 2, channels: [], patterns: ["room:*"], sink: "pattern")
        let direct = RedisMessage(channel: "room:1", payload: ByteBuffer(string: "x"))
        let matched = RedisMessage(channel: "room:1", pattern: "room:*", payload: ByteBuffer(string: "x"))
        #expect(registry.sinks(for: direct) == ["channel"])
        #expect(registry.sinks(for: matched) == ["pattern"])
        #expect(registry.sinks(for: RedisMessage(channel: "other", payload: ByteBuffer())).isEmpty)
    }
}
