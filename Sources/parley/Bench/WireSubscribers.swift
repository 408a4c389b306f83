import Foundation
import NIOCore
import NIOPosix

/// Subscribers as SwiftNIO channel handlers on the event loops: no task, stream or wake-up per
/// frame, so that the load tool's own cost per delivery stays well under the server's. (With a
/// task per socket the tool spent ~10 µs per received frame and saturated its core at 100,000
/// deliveries/s, and its own queueing showed up as latency.) Speaks just enough WebSocket for
/// a Parley subscriber: the upgrade, masked client frames, unfragmented server frames, pings.
extension Subscriber {
    func runOnWire() async {
        guard let target = WireTarget(url: url, query: "user=sub-\(index)") else {
            markClosed()
            return
        }
        do {
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(WireSubscriberHandler(subscriber: self, target: target))
                    }
                }
                .connect(host: target.host, port: target.port)
                .get()
            try await withTaskCancellationHandler {
                try await channel.closeFuture.get()
            } onCancel: {
                channel.close(promise: nil)
            }
        } catch {}
        markClosed()
    }
}

/// Host, port and request target of a `ws://` URL.
struct WireTarget: Sendable {
    var host: String
    var port: Int
    var path: String

    init?(url: String, query: String) {
        guard let components = URLComponents(string: url), components.scheme == "ws", let host = components.host else { return nil }
        self.host = host
        port = components.port ?? 80
        let existing = components.percentEncodedQuery.map { $0 + "&" } ?? ""
        path = (components.percentEncodedPath.isEmpty ? "/" : components.percentEncodedPath) + "?" + existing + query
    }
}

final class WireSubscriberHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let subscriber: Subscriber
    private let target: WireTarget
    /// Bytes not yet parsed: the response head, or a frame cut by a read.
    private var pending: ByteBuffer?
    private var upgraded = false

    init(subscriber: Subscriber, target: WireTarget) {
        self.subscriber = subscriber
        self.target = target
    }

    func channelActive(context: ChannelHandlerContext) {
        var request = context.channel.allocator.buffer(capacity: 256)
        request.writeString(
            "GET \(target.path) HTTP/1.1\r\nHost: \(target.host):\(target.port)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + "Sec-WebSocket-Key: \(Data((0..<16).map { _ in UInt8.random(in: 0...255) }).base64EncodedString())\r\n"
                + "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        context.writeAndFlush(wrapOutboundOut(request), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if pending != nil {
            pending!.writeBuffer(&incoming)
        } else {
            pending = incoming
        }
        if !upgraded {
            guard let end = pending!.readableBytesView.firstRange(of: Array("\r\n\r\n".utf8)) else { return }
            let head = pending!.readString(length: end.upperBound - pending!.readerIndex) ?? ""
            guard head.hasPrefix("HTTP/1.1 101") else {
                context.close(promise: nil)
                return
            }
            upgraded = true
            send(opcode: 0x1, payload: Array(#"{"event":"join","data":{"room":"\#(subscriber.room)"},"id":1}"#.utf8), context: context)
        }
        while let (opcode, payload) = nextFrame() {
            switch opcode {
            case 0x1: received(text: payload)
            case 0x9: send(opcode: 0xA, payload: Array(payload.readableBytesView), context: context)
            case 0x8:
                send(opcode: 0x8, payload: [], context: context)
                context.close(promise: nil)
                return
            case 0xFF:
                context.close(promise: nil)  // fragmented or masked: not what Parley sends
                return
            default: break
            }
        }
        if pending?.readableBytes == 0 { pending = nil }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    /// The next whole frame (0xFF for one this client does not take), or nil until more bytes come.
    private func nextFrame() -> (UInt8, ByteBuffer)? {
        guard var buffer = pending, buffer.readableBytes >= 2,
              let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self),
              let second = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt8.self)
        else { return nil }
        if first & 0x80 == 0 || second & 0x80 != 0 { return (0xFF, ByteBuffer()) }
        var length = Int(second & 0x7F)
        var header = 2
        if length == 126 {
            guard let extended = buffer.getInteger(at: buffer.readerIndex + 2, as: UInt16.self) else { return nil }
            (length, header) = (Int(extended), 4)
        } else if length == 127 {
            guard let extended = buffer.getInteger(at: buffer.readerIndex + 2, as: UInt64.self) else { return nil }
            guard extended < 1 << 31 else { return (0xFF, ByteBuffer()) }
            (length, header) = (Int(extended), 10)
        }
        guard buffer.readableBytes >= header + length else { return nil }
        buffer.moveReaderIndex(forwardBy: header)
        let payload = buffer.readSlice(length: length)!
        pending = buffer
        return (first & 0x0F, payload)
    }

    private func received(text: ByteBuffer) {
        text.withUnsafeReadableBytes { raw in
            let bytes = raw.bindMemory(to: UInt8.self)
            if FrameScanner.starts(bytes, with: #"{"event":"message""#) {
                guard let seq = FrameScanner.integer(after: #""seq":"#, in: bytes) else { return }
                subscriber.record(seq: seq, sentAt: FrameScanner.integer(after: #""content":""#, in: bytes).map(UInt64.init))
            } else if FrameScanner.starts(bytes, with: #"{"event":"ack","id":1,"#) {
                subscriber.markJoined()
            }
        }
    }

    /// A masked client frame (RFC 6455 5.3).
    private func send(opcode: UInt8, payload: [UInt8], context: ChannelHandlerContext) {
        var frame = context.channel.allocator.buffer(capacity: payload.count + 8)
        frame.writeInteger(0x80 | opcode)
        if payload.count < 126 {
            frame.writeInteger(UInt8(0x80 | payload.count))
        } else {
            frame.writeInteger(UInt8(0x80 | 126))
            frame.writeInteger(UInt16(payload.count))
        }
        let mask = (0..<4).map { _ in UInt8.random(in: 0...255) }
        frame.writeBytes(mask)
        frame.writeBytes(payload.enumerated().map { $0.element ^ mask[$0.offset & 3] })
        context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
    }
}
