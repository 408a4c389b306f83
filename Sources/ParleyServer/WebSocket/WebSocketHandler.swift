import Logging
import NIOCore
import NIOWebSocket
import ParleyCore
import Synchronization

/// One upgraded WebSocket, served on its channel's event loop: frames in become `Command`s of
/// its `Connection`; what its outbox holds goes out as pre-encoded frames.
///
/// The outbox is pushed: the first frame queued after a drain schedules one drain on this loop,
/// which writes everything queued by then and flushes once. A room event fanned out to a
/// thousand sockets is one encoding, and per socket one queue append and (when the socket had
/// nothing pending) one event-loop task, one `writev`. While a socket cannot take more bytes
/// (its write buffer is past the high-water mark) nothing more is taken from the outbox, so a
/// slow reader fills its own bounded outbox and is cut off (1013), as before.
///
/// All mutable state is touched on the channel's event loop only; the outbox and connection
/// are thread-safe. That is what makes the `@unchecked Sendable` sound.
final class WebSocketHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    struct Settings: Sendable {
        var limits: Limits
        /// How long a client that did not authenticate at upgrade has to send `connect`.
        var handshakeTimeout: Duration
        /// How long a client whose token expired has to send `connect` with a fresh one.
        var refreshGrace: Duration = .seconds(30)
        /// A ping goes out this often; a client that answered nothing since the last one is gone.
        var pingInterval: Duration = .seconds(30)
        /// How long the client has to answer the server's close frame.
        var closeTimeout: Duration = .seconds(5)
        /// Deadlines (handshake, token expiry) follow this clock; nil: the channel's event loop.
        var clock: (any ParleyClock)?
    }

    /// What every WebSocket of a server shares; each handler keeps one reference to it.
    final class Shared: Sendable {
        let engine: Engine
        let authenticator: any Authenticator
        let settings: Settings
        let logger: Logger
        /// What every WebSocket's `Connection` shares.
        let connections: Connection.Environment

        init(engine: Engine, authenticator: any Authenticator, settings: Settings, logger: Logger) {
            self.engine = engine
            self.authenticator = authenticator
            self.settings = settings
            self.logger = logger
            connections = Connection.Environment(
                engine: engine, authenticator: authenticator, format: WebSocketFrames.shared,
                settings: .init(transport: "websocket", handshakeTimeout: settings.handshakeTimeout, refreshGrace: settings.refreshGrace),
                logger: logger
            )
        }
    }

    private let shared: Shared
    private var engine: Engine { shared.engine }
    private var authenticator: any Authenticator { shared.authenticator }
    private var settings: Settings { shared.settings }
    private var logger: Logger { shared.logger }
    private let identity: Identity?
    private let decoder = ClientFrameDecoder()
    private var frames: WebSocketFrameParser
    /// A frame was broken: nothing more is read.
    private var broken = false

    private var context: ChannelHandlerContext?
    private var connection: Connection?
    /// The frames of one drain; kept between drains so that a steady stream allocates nothing.
    private var batch: [Outbox.Frame] = []
    /// A text message arriving in fragments.
    private var fragments: ByteBuffer?
    /// A binary message arriving in fragments (refused; its continuations are skipped).
    private var inBinaryMessage = false
    private var closeSent = false
    private var heardSinceLastPing = true
    private var pings: LoopPings?
    private var closeTimer: Scheduled<Void>?
    private var ended = false

    init(shared: Shared, identity: Identity?) {
        self.shared = shared
        self.identity = identity
        frames = WebSocketFrameParser(maxFrameSize: shared.settings.limits.maxFrameBytes)
    }

    // MARK: Lifecycle

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        let eventLoop = context.eventLoop
        let drains = LoopDrains.of(eventLoop)
        // Strong references (a weak one costs every connection a side table): the handler and
        // its connection hold each other until `end`, which lets the connection go; the
        // session (and its outbox) may then hold the handler until it has left its rooms.
        let outbox = Outbox(maxBytes: settings.limits.maxOutboxBytes) { drains.schedule(self) }
        let connection = Connection(
            environment: shared.connections, clock: settings.clock ?? EventLoopClock(eventLoop: eventLoop), outbox: outbox,
            resumeReading: { eventLoop.execute(self.resumeReading) }
        )
        self.connection = connection
        do {
            try connection.start(identity: identity)
        } catch {
            connection.close(.goingAway)
        }
        pings = LoopPings.of(eventLoop, interval: settings.pingInterval)
        pings?.add(self)
    }

    func channelInactive(context: ChannelHandlerContext) {
        end()
        context.fireChannelInactive()
    }

    /// A client that resets its connection right after the upgrade can be gone before this
    /// handler is added: `channelInactive` then never reaches it, but the pipeline's teardown
    /// still removes it. Before this, such a connection kept its session, rooms and ping slot
    /// for the life of the process (about 3 KiB each, seen under churn).
    func handlerRemoved(context: ChannelHandlerContext) {
        end()
    }

    /// Once per connection: stops its timers and leaves its rooms.
    private func end() {
        guard !ended else { return }
        ended = true
        pings?.remove(self)
        pings = nil
        closeTimer?.cancel()
        closeTimer = nil
        if let connection {
            // Leaving the rooms is async (presence, broker): one task, once per connection.
            Task { await connection.finish() }
            self.connection = nil
        }
        self.context = nil
        logger.debug("websocket closed")
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("websocket error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    /// The client ended its side of the TCP connection (the server allows half-closed
    /// connections for HTTP): it has left, close frame or not. (Also a FIN that came during
    /// the upgrade, which NIO's upgrade handler replays as this event.)
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    // MARK: Reading

    /// Bytes from the client: each complete frame in turn; a broken one closes the connection.
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !broken else { return }
        var bytes = frames.begin(unwrapInboundIn(data))
        do {
            while let frame = try frames.next(&bytes) {
                read(frame, context: context)
                if broken { return }
            }
            frames.keep(&bytes)
        } catch {
            broken = true
            switch error as? NIOWebSocketError {
            case .invalidFrameLength?:
                protocolClose(context, code: 1009, "frame larger than \(settings.limits.maxFrameBytes) bytes")
            default:
                protocolClose(context, code: 1002, "invalid control frame")
            }
        }
    }

    private func read(_ frame: WebSocketFrame, context: ChannelHandlerContext) {
        heardSinceLastPing = true
        // RFC 6455 5.1 and 5.2: client frames are masked; no extension was negotiated.
        guard frame.maskKey != nil, !frame.rsv1, !frame.rsv2, !frame.rsv3 else {
            protocolClose(context, code: 1002, frame.maskKey == nil ? "client frames must be masked" : "no extension was negotiated")
            return
        }
        switch frame.opcode {
        case .text:
            guard fragments == nil, !inBinaryMessage else { return protocolClose(context, code: 1002, "a new message began inside a fragmented one") }
            if frame.fin {
                handleText(frame.unmaskedData, context: context)
            } else {
                fragments = frame.unmaskedData
            }
        case .continuation:
            if inBinaryMessage {
                if frame.fin { inBinaryMessage = false }
                return
            }
            guard var message = fragments else { return protocolClose(context, code: 1002, "continuation without a message") }
            var piece = frame.unmaskedData
            guard message.readableBytes + piece.readableBytes <= settings.limits.maxFrameBytes else {
                fragments = nil
                return protocolClose(context, code: 1009, "message larger than \(settings.limits.maxFrameBytes) bytes")
            }
            message.writeBuffer(&piece)
            if frame.fin {
                fragments = nil
                handleText(message, context: context)
            } else {
                fragments = message
            }
        case .binary:
            guard fragments == nil, !inBinaryMessage else { return protocolClose(context, code: 1002, "a new message began inside a fragmented one") }
            inBinaryMessage = !frame.fin
            connection?.close(.policyViolation("binary frames are not supported"))
        case .ping:
            guard !closeSent else { return }
            context.writeAndFlush(wrapOutboundOut(WebSocketWire.control(WebSocketWire.pong, payload: frame.unmaskedData)), promise: nil)
        case .pong:
            break
        case .connectionClose:
            receivedClose(frame, context: context)
        default:
            protocolClose(context, code: 1002, "unknown opcode")
        }
    }

    private func handleText(_ text: ByteBuffer, context: ChannelHandlerContext) {
        guard let connection, !connection.outbox.isClosing else { return }
        let keepReading = switch decoder.decode(text) {
        case .success(let (id, command)): connection.submit(command, id: id)
        case .failure(let failure): connection.submit(rejecting: failure.error, id: failure.id)
        }
        if !keepReading {
            // The client sends faster than its commands are served: stop reading from it
            // (TCP pushes back) until they are.
            context.channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
        }
    }

    private func resumeReading() {
        guard let context else { return }
        context.channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
        context.read()
    }

    /// The client's close: answered with the same code unless the server's close went first;
    /// either way the TCP connection ends now.
    private func receivedClose(_ frame: WebSocketFrame, context: ChannelHandlerContext) {
        if closeSent {
            context.close(promise: nil)
            return
        }
        closeSent = true
        var data = frame.unmaskedData
        let code = data.readInteger(as: UInt16.self) ?? 1000
        var payload = ByteBuffer()
        payload.writeInteger(code)
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(WebSocketWire.control(WebSocketWire.close, payload: payload))).whenComplete { _ in
            bound.value.close(promise: nil)
        }
    }

    /// A broken frame: close with `code` and stop reading anything else.
    private func protocolClose(_ context: ChannelHandlerContext, code: UInt16, _ reason: String) {
        connection?.close(.policyViolation(reason))
        sendClose(context, code: code, reason: reason)
    }

    // MARK: Writing

    /// Writes what the outbox holds and flushes once; sends the close frame once the outbox
    /// is closing and empty. Runs on the channel's event loop (`LoopDrains`).
    func drain() {
        guard let context, let connection, !closeSent else { return }
        guard context.channel.isWritable else {
            // Nothing more is taken while the socket is full; a cut-off still goes out at once.
            // At shutdown the queued frames may still go if the client reads, within the close
            // timeout: a client that reads nothing must not hold the server's shutdown.
            switch connection.outbox.closeReason {
            case nil: break
            case .goingAway?: scheduleForcedClose(context)
            case let reason?: sendClose(context, reason)
            }
            return
        }
        // Frames queued after this take signal a new drain.
        let reason = connection.outbox.take(into: &batch)
        if !batch.isEmpty {
            for frame in batch {
                context.write(wrapOutboundOut(frame.bytes), promise: nil)
            }
            engine.metrics.recordDeliveries(batch)
            batch.removeAll(keepingCapacity: batch.capacity <= 64)
            if reason == nil { context.flush() }
        }
        if let reason { sendClose(context, reason) }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { drain() }
        context.fireChannelWritabilityChanged()
    }

    private func sendClose(_ context: ChannelHandlerContext, _ reason: CloseReason) {
        if reason == .slowConsumer { engine.metrics.slowConsumer() }
        let (code, text) = Self.closeCode(reason)
        sendClose(context, code: code, reason: text)
    }

    private func sendClose(_ context: ChannelHandlerContext, code: UInt16, reason: String) {
        guard !closeSent else { return }
        closeSent = true
        logger.debug("closing websocket", metadata: ["code": "\(code)", "reason": "\(reason)"])
        context.writeAndFlush(wrapOutboundOut(WebSocketWire.close(code: code, reason: reason)), promise: nil)
        // The client answers with its close, then the connection ends; if it does not, it ends anyway.
        scheduleForcedClose(context)
    }

    private func scheduleForcedClose(_ context: ChannelHandlerContext) {
        guard closeTimer == nil else { return }
        closeTimer = context.eventLoop.scheduleTask(in: .nanoseconds(settings.closeTimeout.nanoseconds)) { [weak self] in
            self?.context?.close(promise: nil)
        }
    }

    static func closeCode(_ reason: CloseReason) -> (UInt16, String) {
        switch reason {
        case .slowConsumer: (1013, "slow consumer: resume with since")
        case .goingAway: (1001, "server shutting down")
        case .policyViolation(let why), .unauthenticated(let why): (1008, why)
        case .serverError(let why): (1011, why)
        }
    }

    // MARK: Liveness

    /// Every `pingInterval` (`LoopPings`): a client that sent nothing at all since the previous
    /// ping (not even the pong) is gone, and its connection is closed; else it is pinged.
    func pingTick() {
        guard let context else { return }
        guard heardSinceLastPing else {
            logger.debug("websocket ping timed out")
            context.close(promise: nil)
            return
        }
        heardSinceLastPing = false
        if !closeSent {
            context.writeAndFlush(wrapOutboundOut(WebSocketWire.control(WebSocketWire.ping)), promise: nil)
        }
    }
}

/// The pings of every WebSocket on one event loop with one interval: one repeating timer per
/// loop instead of one scheduled task, promise and closure per connection.
final class LoopPings: @unchecked Sendable {
    private let eventLoop: any EventLoop
    private let interval: Duration
    /// Touched on the event loop only.
    private var handlers: [ObjectIdentifier: WebSocketHandler] = [:]
    private var timer: RepeatedTask?

    private init(eventLoop: any EventLoop, interval: Duration) {
        self.eventLoop = eventLoop
        self.interval = interval
    }

    private struct Key: Hashable {
        var eventLoop: ObjectIdentifier
        var interval: Duration
    }

    private static let all = Mutex<[Key: LoopPings]>([:])

    static func of(_ eventLoop: any EventLoop, interval: Duration) -> LoopPings {
        all.withLock { all in
            let key = Key(eventLoop: ObjectIdentifier(eventLoop), interval: interval)
            if let pings = all[key] { return pings }
            let pings = LoopPings(eventLoop: eventLoop, interval: interval)
            all[key] = pings
            return pings
        }
    }

    func add(_ handler: WebSocketHandler) {
        eventLoop.assertInEventLoop()
        handlers[ObjectIdentifier(handler)] = handler
        guard timer == nil else { return }
        let every = TimeAmount.nanoseconds(interval.nanoseconds)
        timer = eventLoop.scheduleRepeatedTask(initialDelay: every, delay: every) { [weak self] _ in
            guard let self else { return }
            for handler in Array(self.handlers.values) { handler.pingTick() }
        }
    }

    func remove(_ handler: WebSocketHandler) {
        eventLoop.assertInEventLoop()
        handlers[ObjectIdentifier(handler)] = nil
        if handlers.isEmpty {
            timer?.cancel()
            timer = nil
        }
    }
}

/// The WebSockets of one event loop whose outboxes have frames waiting. A room event fanned
/// out to a thousand sockets on one loop schedules one task on it, which drains them all,
/// instead of a thousand: the hub, on another thread, only appends to this list.
final class LoopDrains: @unchecked Sendable {
    private let eventLoop: any EventLoop
    private let waiting = Mutex<[WebSocketHandler]>([])
    /// The list being drained; only touched on the event loop. Swapped with `waiting` so that
    /// neither allocates once both have grown.
    private var draining: [WebSocketHandler] = []

    private init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    private static let all = Mutex<[ObjectIdentifier: LoopDrains]>([:])

    /// The drains of `eventLoop`, one per loop for the life of the process.
    static func of(_ eventLoop: any EventLoop) -> LoopDrains {
        all.withLock { all in
            if let drains = all[ObjectIdentifier(eventLoop)] { return drains }
            let drains = LoopDrains(eventLoop: eventLoop)
            all[ObjectIdentifier(eventLoop)] = drains
            return drains
        }
    }

    func schedule(_ handler: WebSocketHandler) {
        let first = waiting.withLock { waiting in
            waiting.append(handler)
            return waiting.count == 1
        }
        if first { eventLoop.execute(run) }
    }

    private func run() {
        waiting.withLock { swap(&$0, &draining) }
        for handler in draining { handler.drain() }
        draining.removeAll(keepingCapacity: draining.capacity <= 4096)
    }
}