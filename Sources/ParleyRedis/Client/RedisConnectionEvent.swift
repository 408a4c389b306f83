/// What a reconnecting client tells its owner about its connection.
public enum RedisConnectionEvent: Sendable, Hashable {
    /// The first connection is ready (handshake done; for a subscriber, subscriptions active).
    case connected
    /// A connection is ready again after a loss, with AUTH, SELECT and every subscription
    /// restored. Whatever was published while it was down was not received.
    case reconnected
    /// The connection was lost; the client is reconnecting.
    case disconnected(RedisError)
    /// A connection attempt failed; the next one starts after `retryIn`.
    case connectFailed(RedisError, retryIn: Duration)
}
