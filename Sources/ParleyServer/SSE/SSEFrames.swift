import NIOCore
import ParleyCore

/// Encodes events as Server-Sent Events: `id: <seq>` (messages only), `event:`, `data:`. A
/// stream takes no commands, so it has no replies; an error is an `error` event.
final class SSEFrames: WireFormat {
    static let shared = SSEFrames()
    static let heartbeat = ByteBuffer(string: ": keepalive\n\n")

    /// `event: error` with `{"code", "message"}`, sent before the server ends a stream.
    static func error(_ error: ParleyError) -> ByteBuffer {
        var json = JSONWriter()
        WireJSON.error(error, into: &json)
        var buffer = ByteBuffer(string: "event: error\ndata: ")
        buffer.writeImmutableBuffer(json.buffer)
        buffer.writeStaticString("\n\n")
        return buffer
    }

    func encode(_ reply: Reply, id: RequestID?) -> ByteBuffer? { nil }

    func encode(_ error: ParleyError, id: RequestID?) -> ByteBuffer { Self.error(error) }

    func encode(_ event: ServerEvent) -> ByteBuffer {
        var json = JSONWriter()
        WireJSON.eventData(event, into: &json)
        var buffer = ByteBufferAllocator().buffer(capacity: json.buffer.readableBytes + 48)
        if case .message(let message) = event {
            buffer.writeString("id: \(message.seq)\n")
        }
        buffer.writeStaticString("event: ")
        buffer.writeStaticString(WireJSON.eventName(event))
        buffer.writeStaticString("\ndata: ")
        buffer.writeImmutableBuffer(json.buffer)
        buffer.writeStaticString("\n\n")
        return buffer
    }
}
