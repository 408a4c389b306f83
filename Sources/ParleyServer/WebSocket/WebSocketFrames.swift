import NIOCore
import ParleyCore

extension RequestID {
    func write(into json: inout JSONWriter) {
        switch self {
        case .number(let number): json.number(number)
        case .string(let string): json.string(string)
        }
    }
}

/// The WebSocket wire format: `{"event": NAME, "data": {...}}`, plus `id` on replies, each
/// encoded as a complete server text frame (header and payload). A room event is encoded once
/// and the same bytes are written to every member's socket as they are.
final class WebSocketFrames: WireFormat {
    static let shared = WebSocketFrames()

    func encode(_ event: ServerEvent) -> ByteBuffer {
        frame(WireJSON.eventName(event), id: nil) { WireJSON.eventData(event, into: &$0) }
    }

    func encode(_ reply: Reply, id: RequestID?) -> ByteBuffer? {
        if case .pong = reply { return frame("pong", id: id) { $0.object { _ in } } }
        // A command without an id gets no ack (errors are always sent).
        guard id != nil else { return nil }
        return frame("ack", id: id) { WireJSON.replyData(reply, into: &$0) }
    }

    func encode(_ error: ParleyError, id: RequestID?) -> ByteBuffer {
        frame("error", id: id) { WireJSON.error(error, into: &$0) }
    }

    /// One complete text frame holding `{"event", "id"?, "data"}`.
    func frame(_ event: StaticString, id: RequestID?, data: (inout JSONWriter) -> Void) -> ByteBuffer {
        var json = JSONWriter(reserving: WebSocketWire.maxHeaderBytes)
        json.object { json in
            json.key("event"); json.string(event.description)
            if let id {
                json.key("id"); id.write(into: &json)
            }
            json.key("data"); data(&json)
        }
        return WebSocketWire.frame(reserved: json.buffer, opcode: WebSocketWire.text)
    }
}

/// Server-to-client WebSocket frames (RFC 6455 section 5.2), written whole as bytes: the
/// server never masks, never fragments, and sends no extension bits.
enum WebSocketWire {
    static let maxHeaderBytes = 10
    static let text: UInt8 = 0x1
    static let close: UInt8 = 0x8
    static let ping: UInt8 = 0x9
    static let pong: UInt8 = 0xA

    /// The payload of a whole frame made by `frame(reserved:opcode:)` (the gateway hands
    /// payloads to a WebSocket writer that frames them itself).
    static func payload(of frame: ByteBuffer) -> ByteBuffer {
        let length = frame.getInteger(at: frame.readerIndex + 1, as: UInt8.self) ?? 0
        let header = length < 126 ? 2 : length == 126 ? 4 : 10
        return frame.getSlice(at: frame.readerIndex + header, length: frame.readableBytes - header) ?? ByteBuffer()
    }

    /// Writes the header into the `maxHeaderBytes` left free before the payload of `buffer`
    /// (whose reader index is at the start of the free space) and returns the whole frame.
    static func frame(reserved buffer: ByteBuffer, opcode: UInt8) -> ByteBuffer {
        var buffer = buffer
        let length = buffer.readableBytes - maxHeaderBytes
        let start = buffer.readerIndex
        let headerBytes = length < 126 ? 2 : length <= 0xFFFF ? 4 : 10
        let at = start + maxHeaderBytes - headerBytes
        buffer.setInteger(0x80 | opcode, at: at)
        switch headerBytes {
        case 2:
            buffer.setInteger(UInt8(length), at: at + 1)
        case 4:
            buffer.setInteger(UInt8(126), at: at + 1)
            buffer.setInteger(UInt16(length), at: at + 2)
        default:
            buffer.setInteger(UInt8(127), at: at + 1)
            buffer.setInteger(UInt64(length), at: at + 2)
        }
        buffer.moveReaderIndex(to: at)
        return buffer
    }

    /// A control frame (close, ping, pong); `payload` is at most 125 bytes.
    static func control(_ opcode: UInt8, payload: ByteBuffer? = nil) -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: maxHeaderBytes + (payload?.readableBytes ?? 0))
        buffer.moveWriterIndex(forwardBy: maxHeaderBytes)
        if var payload { buffer.writeBuffer(&payload) }
        return frame(reserved: buffer, opcode: opcode)
    }

    /// A close frame with its status code and a reason cut to fit a control frame.
    static func close(code: UInt16, reason: String) -> ByteBuffer {
        // Cut by characters, so that no UTF-8 sequence is split.
        var cut = Substring(reason)
        while cut.utf8.count > 123 { cut = cut.dropLast() }
        var payload = ByteBufferAllocator().buffer(capacity: 2 + cut.utf8.count)
        payload.writeInteger(code)
        payload.writeString(String(cut))
        return control(close, payload: payload)
    }
}
