import HummingbirdCore
import Logging
import NIOCore

/// Guards a new connection until its first request head is complete:
/// - the head must arrive within `timeout` (a client that connects and sends nothing, or sends
///   its head a byte at a time, holds no socket for long);
/// - a WebSocket upgrade request without a usable `Sec-WebSocket-Key` or with a version other
///   than 13 is answered `400` with the JSON error here, instead of being left unanswered by
///   the upgrader.
/// Then it hands the bytes on and removes itself; later requests on a keep-alive connection
/// fall under the HTTP idle timeout, an upgraded WebSocket under its pings.
final class RequestHeadDeadline: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// Longer heads are left to the HTTP decoder's own limits.
    static let maxInspectedBytes = 64 * 1024

    private let timeout: TimeAmount
    private var deadline: Scheduled<Void>?
    private var buffered: ByteBuffer?

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { start(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context)
        context.fireChannelActive()
    }

    private func start(_ context: ChannelHandlerContext) {
        guard deadline == nil else { return }
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        deadline = context.eventLoop.scheduleTask(in: timeout) {
            loopBound.value.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var chunk = unwrapInboundIn(data)
        if buffered == nil {
            buffered = chunk
        } else {
            buffered!.writeBuffer(&chunk)
        }
        let bytes = buffered!.readableBytesView
        guard let end = Self.headEnd(bytes) else {
            if bytes.count > Self.maxInspectedBytes { pass(context) }
            return
        }
        if let problem = Self.upgradeProblem(String(decoding: bytes[bytes.startIndex..<end], as: UTF8.self)) {
            refuse(context, problem)
        } else {
            pass(context)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
    }

    private func pass(_ context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
        if let buffered { context.fireChannelRead(wrapInboundOut(buffered)) }
        buffered = nil
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    private func refuse(_ context: ChannelHandlerContext, _ message: String) {
        deadline?.cancel()
        deadline = nil
        buffered = nil
        let body = #"{"error":{"code":"bad_request","message":"\#(message)"}}"#
        let response = "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json; charset=utf-8\r\n"
            + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapInboundOut(ByteBuffer(string: response))).whenComplete { _ in
            loopBound.value.close(promise: nil)
        }
    }

    /// The index just past the blank line that ends the head, if it is there.
    static func headEnd(_ bytes: ByteBufferView) -> ByteBufferView.Index? {
        var tail: UInt32 = 0
        var index = bytes.startIndex
        while index < bytes.endIndex {
            tail = (tail << 8) | UInt32(bytes[index])
            index = bytes.index(after: index)
            if tail == 0x0D0A_0D0A { return index }
        }
        return nil
    }

    /// Why a WebSocket upgrade request cannot be upgraded; nil when it can, or is no upgrade.
    static func upgradeProblem(_ head: String) -> String? {
        var upgrade = false
        var key: String?
        var version: String?
        for line in head.split(separator: "\r\n").dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].trimmingCharacters(in: .whitespaces).lowercased()
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            switch name {
            case "upgrade": upgrade = upgrade || value.lowercased() == "websocket"
            case "sec-websocket-key": key = value
            case "sec-websocket-version": version = value
            default: break
            }
        }
        guard upgrade else { return nil }
        guard let key, !key.isEmpty else { return "a WebSocket upgrade needs a Sec-WebSocket-Key header" }
        guard version == "13" else { return "a WebSocket upgrade needs Sec-WebSocket-Version: 13" }
        return nil
    }
}

/// A server child channel with `RequestHeadDeadline` in front of it.
struct HeadDeadlineChannel<Base: ServerChildChannel>: ServerChildChannel {
    typealias Value = Base.Value
    let base: Base
    let timeout: TimeAmount

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(RequestHeadDeadline(timeout: timeout))
        }.flatMap {
            base.setup(channel: channel, logger: logger)
        }
    }

    func handle(value: Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}
