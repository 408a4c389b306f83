import NIOCore
import Testing

@testable import ParleyRedis

@Suite("Subscription buffer (slow consumers)")
struct SubscriptionBufferTests {
    func message(_ text: String) -> RedisSubscriptionEvent {
        .message(RedisMessage(channel: "c", payload: ByteBuffer(string: text)))
    }

    @Test func dropsNewestMessagesWhenFullAndSaysHowMany() async {
        let buffer = SubscriptionBuffer(capacity: 2)
        for text in ["1", "2", "3", "4", "5"] { buffer.yield(message(text)) }
        #expect(await buffer.next() == message("1"))
        buffer.yield(message("6"))
        buffer.yield(message("7"))
        buffer.finish()
        var rest: [RedisSubscriptionEvent] = []
        while let event = await buffer.next() { rest.append(event) }
        #expect(rest == [message("2"), .dropped(count: 3), message("6"), .dropped(count: 1)])
    }

    @Test func controlEventsDoNotCountAgainstTheCapacity() async {
        let buffer = SubscriptionBuffer(capacity: 1)
        buffer.yield(message("1"))
        buffer.yield(.reconnected)
        buffer.yield(.reconnected)
        buffer.finish()
        #expect(await buffer.next() == message("1"))
        #expect(await buffer.next() == .reconnected)
        #expect(await buffer.next() == nil)
    }

    @Test func aWaitingConsumerIsHandedTheEvent() async {
        let buffer = SubscriptionBuffer(capacity: 4)
        async let next = buffer.next()
        try? await Task.sleep(for: .milliseconds(20))
        buffer.yield(message("x"))
        #expect(await next == message("x"))
    }

    @Test func cancellationEndsTheWait() async {
        let buffer = SubscriptionBuffer(capacity: 4)
        let task = Task { await buffer.next() }
        try? await Task.sleep(for: .milliseconds(20))
        task.cancel()
        #expect(await task.value == nil)
    }
}
