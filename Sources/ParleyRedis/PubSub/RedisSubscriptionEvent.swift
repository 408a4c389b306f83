/// What a subscription yields, in order.
public enum RedisSubscriptionEvent: Sendable, Hashable {
    case message(RedisMessage)
    /// The consumer fell behind: `count` messages that arrived while the buffer was full were
    /// discarded here. Later messages follow.
    case dropped(count: Int)
    /// The subscription is active on a new connection after a time without one (a reconnect, or
    /// the first connection for a subscription made while disconnected). Messages published in
    /// between were not received: fill the gap from the source of truth. Sent only once the server
    /// confirmed the subscription, so a fill that starts after this event misses nothing.
    case reconnected
}
