import NIOCore

/// Turns bytes into `RESPToken`s, one complete value per step, keeping partial input buffered
/// until the rest arrives. Malformed input throws a `protocolError`: the connection then closes.
public struct RESPDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = RESPToken

    public let limits: RESPLimits

    public init(limits: RESPLimits = RESPLimits()) {
        self.limits = limits
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> RESPToken? {
        try RESPToken(consuming: &buffer, limits: limits)
    }

    /// The decoder in its channel handler, with the buffer bound from `limits`.
    public static func handler(limits: RESPLimits = RESPLimits()) -> ByteToMessageHandler<RESPDecoder> {
        ByteToMessageHandler(RESPDecoder(limits: limits), maximumBufferSize: limits.maxBufferedBytes)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> RESPToken? {
        try decode(buffer: &buffer)
    }
}
