import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import ParleyCore

/// Guards a new connection until its first request head is complete:
/// - the head must arrive within `timeout` (a client that connects and sends nothing, or sends
///   its head a byte at a time, holds no socket for long);
/// - a WebSocket upgrade request without a usable `Sec-WebSocket-Key` or with a version other
///   than 13 is answered `400` with the JSON error here, instead of being left unanswered by
///   the upgrader.
/// (The upgrade's own checks, origin, credentials and limits, are answered with their status
/// by `ParleyHTTPChannel`.) Then it hands the bytes on and removes itself; later requests on a keep-alive connection
/// fall under the HTTP idle timeout, an upgraded WebSocket under its pings.
final class FirstRequestGuard: ChannelInboundHandler, RemovableChannelHandler {
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
        let head = String(decoding: bytes[bytes.startIndex..<end], as: UTF8.self)
        let headers = Self.headers(head)
        if let problem = Self.upgradeProblem(headers) {
            refuse(context, .badRequest(problem))
            return
        }
        if Self.asksForOtherUpgrade(headers) {
            // An upgrade to anything but a WebSocket (`curl --http2` asks for h2c) is ignored,
            // as RFC 9110 (7.8) allows: the request is served over HTTP/1.1 as if it had not
            // asked. Left in, it would reach SwiftNIO's upgrade handler, which finds no
            // upgrader for it and leaves the request unanswered.
            var rest = buffered!
            rest.moveReaderIndex(forwardBy: end - bytes.startIndex)
            var rewritten = ByteBuffer(string: Self.withoutUpgrade(head))
            rewritten.writeBuffer(&rest)
            buffered = rewritten
        }
        pass(context)
    }

    /// The request asks to upgrade, and not to a WebSocket.
    static func asksForOtherUpgrade(_ headers: [(name: String, value: String)]) -> Bool {
        let upgrades = headers.filter { $0.name == "upgrade" }
        return !upgrades.isEmpty && !upgrades.contains { $0.value.lowercased().contains("websocket") }
    }

    /// The head without its `Upgrade` header lines.
    static func withoutUpgrade(_ head: String) -> String {
        head.split(separator: "\r\n", omittingEmptySubsequences: false)
            .filter { !$0.lowercased().hasPrefix("upgrade:") }
            .joined(separator: "\r\n")
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

    /// Answers the request with the error's status and JSON, then closes the connection.
    private func refuse(_ context: ChannelHandlerContext, _ error: ParleyError) {
        deadline?.cancel()
        deadline = nil
        buffered = nil
        let body = String(buffer: WireJSON.errorBody(error))
        let status = error.status
        var response = "HTTP/1.1 \(status.code) \(status.reasonPhrase)\r\nContent-Type: application/json; charset=utf-8\r\n"
        if let retryAfterMs = error.retryAfterMs { response += "Retry-After: \((retryAfterMs + 999) / 1000)\r\n" }
        response += "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body
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

    static func headers(_ head: String) -> [(name: String, value: String)] {
        func trimmed(_ text: Substring.UTF8View) -> String {
            let blank = { (byte: UInt8) in byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") }
            guard let first = text.firstIndex(where: { !blank($0) }), let last = text.lastIndex(where: { !blank($0) }) else { return "" }
            return String(Substring(text[first...last]))
        }
        return head.utf8.split(separator: UInt8(ascii: "\n")).dropFirst().compactMap { line in
            let line = line.last == UInt8(ascii: "\r") ? line.dropLast() : line
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { return nil }
            return (trimmed(line[..<colon]).lowercased(), trimmed(line[line.index(after: colon)...]))
        }
    }

    /// Why a WebSocket upgrade request cannot be upgraded; nil when it can, or is no upgrade.
    static func upgradeProblem(_ headers: [(name: String, value: String)]) -> String? {
        var upgrade = false
        var key: String?
        var version: String?
        for (name, value) in headers {
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

/// A server child channel with `FirstRequestGuard` in front of it.
struct FirstRequestGuardChannel<Base: ServerChildChannel>: ServerChildChannel {
    typealias Value = Base.Value
    let base: Base
    let timeout: TimeAmount

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(FirstRequestGuard(timeout: timeout))
        }.flatMap {
            base.setup(channel: channel, logger: logger)
        }
    }

    func handle(value: Value, logger: Logger) async {
        // Hummingbird logs at error level every connection that closed before its upgrade
        // completed; the guard closes such connections on purpose (refusals, deadlines), and a
        // client could fill the log with them. Parley's own code logs through its own logger.
        var logger = logger
        logger.logLevel = max(logger.logLevel, .critical)
        await base.handle(value: value, logger: logger)
    }
}
