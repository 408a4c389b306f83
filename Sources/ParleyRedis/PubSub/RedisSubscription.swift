/// The events of one subscription, as an AsyncSequence with one consumer.
///
/// It exists only inside the closure given to `RedisSubscriber.subscribe`: when the closure
/// returns or throws, the sequence ends and its channels and patterns are unsubscribed (unless
/// another subscription still uses them). It also ends when the subscriber shuts down.
///
/// Delivery: messages for a channel arrive in the order Redis sent them. A slow consumer only
/// affects itself: up to `RedisConfiguration.subscriptionBufferSize` messages wait for it, and
/// past that new messages are discarded and reported by one `.dropped(count:)` event in their
/// place. A lost connection is reported by `.reconnected` once the subscription is live again.
public struct RedisSubscription: AsyncSequence, Sendable {
    public typealias Element = RedisSubscriptionEvent
    public typealias Failure = Never

    public let channels: [String]
    public let patterns: [String]
    let id: Int
    let buffer: SubscriptionBuffer

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(buffer: buffer)
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        let buffer: SubscriptionBuffer

        public mutating func next() async -> RedisSubscriptionEvent? {
            await buffer.next()
        }

        public mutating func next(isolation actor: isolated (any Actor)?) async -> RedisSubscriptionEvent? {
            await buffer.next()
        }
    }

    /// Only the messages, skipping `.dropped` and `.reconnected`.
    public var messages: Messages { Messages(buffer: buffer) }

    public struct Messages: AsyncSequence, Sendable {
        public typealias Element = RedisMessage
        public typealias Failure = Never
        let buffer: SubscriptionBuffer

        public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(buffer: buffer) }

        public struct AsyncIterator: AsyncIteratorProtocol {
            let buffer: SubscriptionBuffer

            public mutating func next() async -> RedisMessage? {
                await buffer.nextMessage()
            }

            public mutating func next(isolation actor: isolated (any Actor)?) async -> RedisMessage? {
                await buffer.nextMessage()
            }
        }
    }
}
