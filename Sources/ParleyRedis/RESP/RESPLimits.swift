/// Bounds the decoder applies to every reply, so that a malformed or hostile server gets a
/// clear `protocolError` and a closed connection instead of unbounded memory or recursion.
public struct RESPLimits: Sendable, Hashable {
    /// Deepest nesting of aggregates (arrays, maps, sets, pushes, attributes).
    public var maxDepth: Int
    /// Longest bulk string, bulk error or verbatim string, in bytes (Redis' own default is 512 MiB).
    public var maxBulkLength: Int
    /// Most elements one aggregate may announce.
    public var maxAggregateCount: Int
    /// Longest header or simple line (simple strings, errors, numbers), in bytes.
    public var maxLineLength: Int
    /// Most undecoded bytes the connection buffers while waiting for the rest of a reply.
    public var maxBufferedBytes: Int

    public init(
        maxDepth: Int = 64,
        maxBulkLength: Int = 512 * 1024 * 1024,
        maxAggregateCount: Int = 1 << 24,
        maxLineLength: Int = 64 * 1024,
        maxBufferedBytes: Int = 1024 * 1024 * 1024
    ) {
        self.maxDepth = maxDepth
        self.maxBulkLength = maxBulkLength
        self.maxAggregateCount = maxAggregateCount
        self.maxLineLength = maxLineLength
        self.maxBufferedBytes = maxBufferedBytes
    }
}
