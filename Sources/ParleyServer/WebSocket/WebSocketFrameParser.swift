import NIOCore
import NIOWebSocket

/// Splits the bytes a WebSocket client sends into frames (RFC 6455 section 5.2), inside the
/// connection's own handler rather than a `ByteToMessageHandler` of its own: that handler, its
/// decoder and its pipeline context cost an idle connection about 0.3 KiB. Bytes of a frame
/// not yet complete are kept in a buffer of their own size (never the channel's receive
/// buffer, which NIO reuses for the next read); once a frame is complete nothing is kept.
/// The checks are those of NIO's `WebSocketFrameDecoder`, with the same errors: a frame longer
/// than `maxFrameSize` (checked from its header, before its payload is read), a fragmented
/// control frame, a control frame longer than 125 bytes.
struct WebSocketFrameParser {
    let maxFrameSize: Int
    private var partial: ByteBuffer?
    /// The buffer being parsed is `partial` grown by a read (ours), not the read itself.
    private var ownsBuffer = false

    init(maxFrameSize: Int) {
        self.maxFrameSize = maxFrameSize
    }

    /// What to parse after a read: `bytes` after what was kept of the last one. Take frames
    /// from it with `next`, then give it back with `keep`.
    mutating func begin(_ bytes: ByteBuffer) -> ByteBuffer {
        guard var kept = partial.take() else {
            ownsBuffer = false
            return bytes
        }
        ownsBuffer = true
        var bytes = bytes
        kept.writeBuffer(&bytes)
        return kept
    }

    /// Keeps the bytes of a frame not yet complete: a copy of the rest of a read (a slice
    /// would keep the whole receive buffer), or the buffer already kept, grown in place (a
    /// frame trickled in byte by byte is not copied again at every read). At most one frame
    /// is ever kept, and a frame's header is checked before its payload is waited for, so
    /// this stays under `maxFrameSize` plus a header.
    mutating func keep(_ buffer: inout ByteBuffer) {
        guard buffer.readableBytes > 0 else { return }
        if ownsBuffer {
            if buffer.readerIndex > buffer.readableBytes { buffer.discardReadBytes() }
            partial = buffer
            return
        }
        var rest = ByteBufferAllocator().buffer(capacity: buffer.readableBytes)
        rest.writeBuffer(&buffer)
        partial = rest
    }

    /// The next complete frame, consumed from `buffer`; nil when it is not all there yet.
    /// Throws a `NIOWebSocketError` for a broken frame.
    func next(_ buffer: inout ByteBuffer) throws -> WebSocketFrame? {
        let start = buffer.readerIndex
        guard let first = buffer.getInteger(at: start, as: UInt8.self), let second = buffer.getInteger(at: start + 1, as: UInt8.self) else {
            return nil
        }
        let opcode = first & 0x0F
        let fin = first & 0x80 != 0
        let shortLength = Int(second & 0x7F)
        if opcode >= 0x8 {
            guard fin else { throw NIOWebSocketError.fragmentedControlFrame }
            guard shortLength <= 125 else { throw NIOWebSocketError.multiByteControlFrameLength }
        }
        var offset = start + 2
        let length: UInt64
        switch shortLength {
        case 126:
            guard let extended = buffer.getInteger(at: offset, as: UInt16.self) else { return nil }
            length = UInt64(extended)
            offset += 2
        case 127:
            guard let extended = buffer.getInteger(at: offset, as: UInt64.self) else { return nil }
            length = extended
            offset += 8
        default:
            length = UInt64(shortLength)
        }
        guard length <= UInt64(maxFrameSize) else { throw NIOWebSocketError.invalidFrameLength }
        var maskKey: WebSocketMaskingKey?
        if second & 0x80 != 0 {
            guard let key = buffer.getBytes(at: offset, length: 4) else { return nil }
            maskKey = WebSocketMaskingKey(key)
            offset += 4
        }
        guard let data = buffer.getSlice(at: offset, length: Int(length)) else { return nil }
        buffer.moveReaderIndex(to: offset + Int(length))
        return WebSocketFrame(
            fin: fin, rsv1: first & 0x40 != 0, rsv2: first & 0x20 != 0, rsv3: first & 0x10 != 0,
            opcode: WebSocketOpcode(encodedWebSocketOpcode: opcode)!, maskKey: maskKey, data: data
        )
    }
}
