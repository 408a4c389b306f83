import NIOCore
import NIOWebSocket
@testable import ParleyServer
import Testing

/// The WebSocket handler's own frame splitting (RFC 6455 5.2), without sockets: every length
/// form, frames split across reads at every byte, several in one read, and the errors NIO's
/// decoder raises for the same input.
@Suite("WebSocket frame parser")
struct WebSocketFrameParserTests {
    /// A client frame as bytes: masked unless `mask` is nil.
    static func frame(_ opcode: UInt8, _ payload: [UInt8], fin: Bool = true, mask: [UInt8]? = [1, 2, 3, 4], rsv: UInt8 = 0) -> [UInt8] {
        var bytes: [UInt8] = [(fin ? 0x80 : 0) | rsv | opcode]
        let maskBit: UInt8 = mask == nil ? 0 : 0x80
        switch payload.count {
        case ..<126: bytes.append(maskBit | UInt8(payload.count))
        case ..<65536: bytes += [maskBit | 126, UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
        default: bytes += [maskBit | 127] + (0..<8).reversed().map { UInt8((payload.count >> ($0 * 8)) & 0xFF) }
        }
        guard let mask else { return bytes + payload }
        return bytes + mask + payload.enumerated().map { $0.element ^ mask[$0.offset % 4] }
    }

    /// Feeds `bytes` in reads of `chunk` bytes; returns the frames' opcodes and unmasked payloads.
    static func parse(_ bytes: [UInt8], chunk: Int, max: Int = 1 << 20) throws -> [(WebSocketOpcode, [UInt8], Bool)] {
        var parser = WebSocketFrameParser(maxFrameSize: max)
        var frames: [(WebSocketOpcode, [UInt8], Bool)] = []
        var start = 0
        while start < bytes.count {
            var buffer = parser.begin(ByteBuffer(bytes: bytes[start..<min(bytes.count, start + chunk)]))
            while let frame = try parser.next(&buffer) {
                frames.append((frame.opcode, Array(buffer: frame.unmaskedData), frame.maskKey != nil))
            }
            parser.keep(&buffer)
            start += chunk
        }
        return frames
    }

    @Test("every length form, masked and not, whole or split at every byte, several to a read")
    func lengths() throws {
        let payloads: [[UInt8]] = [[], Array("hi".utf8), [UInt8](repeating: 7, count: 125), [UInt8](repeating: 8, count: 126),
                                   [UInt8](repeating: 9, count: 65535), [UInt8](repeating: 10, count: 65536)]
        var stream: [UInt8] = []
        for payload in payloads { stream += Self.frame(0x1, payload) }
        stream += Self.frame(0x9, Array("ping".utf8)) + Self.frame(0x2, [1, 2, 3], mask: nil)
        for chunk in [1, 2, 3, 7, 100, 4096, stream.count] {
            let frames = try Self.parse(stream, chunk: chunk)
            #expect(frames.map(\.1) == payloads + [Array("ping".utf8), [1, 2, 3]], "chunk \(chunk)")
            #expect(frames.map(\.0) == Array(repeating: .text, count: payloads.count) + [.ping, .binary])
            #expect(frames.map(\.2) == Array(repeating: true, count: payloads.count + 1) + [false])
        }
    }

    @Test("fragments, reserved bits and opcodes are passed on as they came, for the handler to judge")
    func passedOn() throws {
        var parser = WebSocketFrameParser(maxFrameSize: 100)
        var buffer = parser.begin(ByteBuffer(bytes: Self.frame(0x1, [65], fin: false) + Self.frame(0x0, [66]) + Self.frame(0x3, [], rsv: 0x40)))
        let first = try #require(try parser.next(&buffer))
        let second = try #require(try parser.next(&buffer))
        let third = try #require(try parser.next(&buffer))
        #expect(!first.fin && first.opcode == .text && second.fin && second.opcode == .continuation)
        #expect(third.rsv1 && third.opcode == WebSocketOpcode(encodedWebSocketOpcode: 3))
        #expect(try parser.next(&buffer) == nil)
    }

    @Test("NIO's errors for the same input: too long (from the header alone), fragmented or long control frames")
    func errors() throws {
        // The header of a frame over the limit is enough: its payload is never waited for.
        #expect(throws: NIOWebSocketError.invalidFrameLength) { try Self.parse(Array(Self.frame(0x1, [UInt8](repeating: 1, count: 101)).prefix(8)), chunk: 8, max: 100) }
        var huge: [UInt8] = [0x81, 0xFF]
        huge += [0x80, 0, 0, 0, 0, 0, 0, 0]
        #expect(throws: NIOWebSocketError.invalidFrameLength) { try Self.parse(huge, chunk: 10) }
        #expect(throws: NIOWebSocketError.fragmentedControlFrame) { try Self.parse(Self.frame(0x9, [1], fin: false), chunk: 100) }
        #expect(throws: NIOWebSocketError.multiByteControlFrameLength) { try Self.parse(Self.frame(0x8, [UInt8](repeating: 0, count: 126)), chunk: 1000) }
        // Exactly the limit is fine.
        #expect(try Self.parse(Self.frame(0x1, [UInt8](repeating: 1, count: 100)), chunk: 3, max: 100).count == 1)
    }

    @Test("a largest frame trickled in a byte at a time, then frames run on in the kept buffer")
    func trickle() throws {
        let payload = [UInt8](repeating: 42, count: 65536)
        let stream = Self.frame(0x1, payload) + Self.frame(0x1, Array("after".utf8)) + Self.frame(0x8, [3, 232])
        let frames = try Self.parse(stream, chunk: 1, max: 65536)
        #expect(frames.map(\.1) == [payload, Array("after".utf8), [3, 232]])
    }

    @Test("the bytes of an incomplete frame are kept in a buffer of their own size, not the read's")
    func keepsLittle() throws {
        var parser = WebSocketFrameParser(maxFrameSize: 1 << 16)
        var read = ByteBufferAllocator().buffer(capacity: 65536)
        read.writeBytes(Self.frame(0x1, Array("whole".utf8)) + Self.frame(0x1, [UInt8](repeating: 5, count: 300)).prefix(10))
        var buffer = parser.begin(read)
        #expect(try parser.next(&buffer).map { Array(buffer: $0.unmaskedData) } == Array("whole".utf8))
        #expect(try parser.next(&buffer) == nil)
        parser.keep(&buffer)
        let kept = parser.begin(ByteBuffer())
        #expect(kept.readableBytes == 10 && kept.capacity < 1024)
    }
}
