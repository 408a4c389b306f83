import Logging
import NIOCore
import NIOWebSocket
import ParleyCore

/// The Engine.IO WebSocket transport: one packet per WebSocket message (text, or binary for a
/// Socket.IO attachment). It either carries a session from its start, or probes for a polling
/// session (`2probe` / `3probe`) and takes it over at `5` (upgrade). Served on the channel's
/// event loop; the session's outbox schedules a drain that writes everything queued and
/// flushes once.
final class SocketIOWebSocketHandler: ChannelInboundHandler, SocketIOSocket, @unchecked Sendable {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = ByteBuffer

    /// How a WebSocket to `/socket.io/` was admitted.
    enum Admission: Sendable {
        /// A session of its own, opened with this slot.
        case new(ConnectionLimiter.Ticket)
        /// An upgrade of this polling session.
        case upgrade(SocketIOSession)
    }

    private let server: SocketIOServer
    private let admission: Admission
    private var session: SocketIOSession?
    private var upgraded = false
    private var context: ChannelHandlerContext?
    private var packets: [ByteBuffer] = []
    private var frames: [Outbox.Frame] = []
    private var closeSent = false
    private var ended = false

    init(server: SocketIOServer, admission: Admission) {
        self.server = server
        self.admission = admission
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        switch admission {
        case .new(let ticket):
            upgraded = true
            session = server.open(transport: .websocket(self), ticket: ticket, eventLoop: context.eventLoop)
        case .upgrade(let session):
            self.session = session
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        end()
        context.fireChannelInactive()
    }

    /// Also reached when the client was gone before this handler was added (no
    /// `channelInactive` then): the session must still hear of it.
    func handlerRemoved(context: ChannelHandlerContext) {
        end()
    }

    private func end() {
        guard !ended else { return }
        ended = true
        session?.websocketClosed(self)
        self.context = nil
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? NIOWebSocketError, case .invalidFrameLength = error {
            sendClose(context, code: 1009, reason: "message larger than \(server.settings.maxPayload) bytes")
            return
        }
        server.logger.debug("socket.io websocket error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    func scheduleDrain() {
        guard let eventLoop = context?.eventLoop else { return }
        eventLoop.execute { self.drain() }
    }

    // MARK: Reading

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        guard frame.maskKey != nil else { return sendClose(context, code: 1002, reason: "client frames must be masked") }
        switch frame.opcode {
        case .text:
            let text = String(buffer: frame.unmaskedData)
            guard let packet = EngineIOPacket(Substring(text)) else {
                session?.link.close(.policyViolation("not an Engine.IO packet"))
                return
            }
            receive(packet, context: context)
        case .binary:
            if upgraded { session?.receiveBinary() }
        case .ping:
            context.writeAndFlush(wrapOutboundOut(WebSocketWire.control(WebSocketWire.pong, payload: frame.unmaskedData)), promise: nil)
        case .connectionClose:
            if !closeSent {
                closeSent = true
                var payload = ByteBuffer()
                payload.writeInteger(UInt16(1000))
                let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
                context.writeAndFlush(wrapOutboundOut(WebSocketWire.control(WebSocketWire.close, payload: payload))).whenComplete { _ in
                    bound.value.close(promise: nil)
                }
            } else {
                context.close(promise: nil)
            }
        default:
            break
        }
    }

    private func receive(_ packet: EngineIOPacket, context: ChannelHandlerContext) {
        guard let session else { return }
        if upgraded {
            session.receive(packet)
            if session.isPaused {
                // The client sends faster than its commands are served: stop reading from it
                // (TCP pushes back) until they are.
                context.channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
            }
            return
        }
        // Probing for a polling session.
        switch packet {
        case .ping("probe"):
            session.probe(from: self)
            write(SocketIOWriter.withHeadroom(SocketIOFrames.pongProbe, WebSocketWire.maxHeaderBytes), context: context)
            context.flush()
        case .upgrade:
            upgraded = session.upgrade(to: self)
            if !upgraded { context.close(promise: nil) }
        default:
            break
        }
    }

    /// Called from any thread once the session's commands are served.
    func resumeReading() {
        guard let eventLoop = context?.eventLoop else { return }
        eventLoop.execute {
            guard let context = self.context else { return }
            context.channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
            context.read()
        }
    }

    // MARK: Writing

    private func drain() {
        guard let context, let session, upgraded, !closeSent else { return }
        let reason = session.takePackets(into: &packets, frames: &frames, headroom: WebSocketWire.maxHeaderBytes)
        for packet in packets { write(packet, context: context) }
        packets.removeAll(keepingCapacity: packets.capacity <= 64)
        context.flush()
        guard let reason else { return }
        let (code, text) = WebSocketHandler.closeCode(reason)
        sendClose(context, code: code, reason: text)
    }

    /// Writes a packet that has the frame header's room in front (`SocketIOWriter.withHeadroom`).
    private func write(_ packet: ByteBuffer, context: ChannelHandlerContext) {
        context.write(wrapOutboundOut(WebSocketWire.frame(reserved: packet, opcode: WebSocketWire.text)), promise: nil)
    }

    private func sendClose(_ context: ChannelHandlerContext, code: UInt16, reason: String) {
        guard !closeSent else { return }
        closeSent = true
        session?.end()
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(WebSocketWire.close(code: code, reason: reason))).whenComplete { _ in
            // The client's answer is not awaited: Engine.IO clients reconnect at once.
            bound.value.close(promise: nil)
        }
    }
}
