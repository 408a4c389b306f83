import NIOCore

/// One message received on a subscribed channel or pattern.
public struct RedisMessage: Sendable, Hashable {
    /// The channel it was published to.
    public var channel: String
    /// The pattern that matched, for PSUBSCRIBE subscriptions.
    public var pattern: String?
    /// The published bytes, a slice of the read buffer (no copy).
    public var payload: ByteBuffer

    public init(channel: String, pattern: String? = nil, payload: ByteBuffer) {
        self.channel = channel
        self.pattern = pattern
        self.payload = payload
    }

    public var payloadString: String { String(buffer: payload) }
}
