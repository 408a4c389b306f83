import HummingbirdWebSocket
import Logging
import NIOCore
import NIOWebSocket
import ParleyCore
import Synchronization

/// One WebSocket client: a reader task that turns frames into engine calls and a writer task
/// that drains the session's outbox onto the socket. Replies and room events share the
/// outbox, so a client sees them in the order the server produced them.
final class WebSocketConnection: Sendable {
    struct Settings: Sendable {
        var limits: Limits
        /// How long a client that did not authenticate at upgrade has to send `connect`.
        var handshakeTimeout: Duration
        /// How long a client whose token expired has to send `connect` with a fresh one.
        var refreshGrace: Duration = .seconds(30)
    }

    private let engine: Engine
    private let authenticator: any Authenticator
    private let settings: Settings
    private let logger: Logger
    private let frames = WebSocketFrames.shared
    let outbox: Outbox
    private let state = Mutex<(session: Session?, badFrames: Int)>((nil, 0))
    /// Poked whenever the session's identity (so its expiry) changes.
    private let expiry: TokenExpiry

    init(engine: Engine, authenticator: any Authenticator, settings: Settings, logger: Logger) {
        self.engine = engine
        self.authenticator = authenticator
        self.settings = settings
        self.logger = logger
        self.outbox = Outbox(maxBytes: settings.limits.maxOutboxBytes)
        self.expiry = TokenExpiry(grace: settings.refreshGrace)
    }

    private var session: Session? { state.withLock { $0.session } }

    /// Serves the connection until either side closes it. `identity` is set when the client
    /// authenticated in the upgrade request.
    func run(identity: Identity?, inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter) async {
        if let identity {
            do {
                try open(identity)
            } catch {
                outbox.close(.goingAway)
            }
        }
        // The connection ends when the reader (client gone) or the writer (server closed it)
        // ends; the handshake timer only asks the writer to close.
        await withTaskGroup(of: Bool.self) { group in
            group.addTask { await self.writeLoop(outbound); return true }
            group.addTask { await self.readLoop(inbound); return true }
            if identity == nil {
                group.addTask { await self.enforceHandshakeTimeout(); return false }
            }
            // Only tokens expire: open mode needs no watcher (one task less per connection).
            if !authenticator.isOpen {
                group.addTask { await self.enforceExpiry(); return false }
            }
            while let ended = await group.next(), !ended {}
            group.cancelAll()
        }
        if let session { await engine.disconnect(session) }
        logger.debug("websocket closed")
    }

    private func open(_ identity: Identity) throws(ParleyError) {
        let session = try engine.connect(
            try RequestAuth.refuseBackend(identity), transport: "websocket", encoder: frames, outbox: outbox)
        state.withLock { $0.session = session }
        expiry.poke()
    }

    // MARK: Writing

    private func writeLoop(_ outbound: WebSocketOutboundWriter) async {
        do {
            while true {
                switch await outbox.next() {
                case .frames(let batch):
                    for frame in batch {
                        try await outbound.write(.custom(WebSocketFrame(fin: true, opcode: .text, data: frame.bytes)))
                    }
                    engine.metrics.recordDeliveries(batch)
                case .closed(let reason):
                    // Cancelled means the reader ended first: the client is already gone.
                    guard !Task.isCancelled else { return }
                    if reason == .slowConsumer { engine.metrics.slowConsumer() }
                    let (code, text) = Self.closeCode(reason)
                    logger.debug("closing websocket", metadata: ["code": "\(code)", "reason": "\(text)"])
                    try await outbound.close(code, reason: text)
                    return
                }
            }
        } catch {
            logger.debug("websocket write failed", metadata: ["error": "\(error)"])
        }
    }

    static func closeCode(_ reason: CloseReason) -> (WebSocketErrorCode, String) {
        switch reason {
        case .slowConsumer: (.unknown(1013), "slow consumer: resume with since")
        case .goingAway: (.goingAway, "server shutting down")
        case .policyViolation(let why): (.policyViolation, why)
        case .serverError(let why): (.unexpectedServerError, why)
        }
    }

    private func enforceHandshakeTimeout() async {
        try? await Task.sleep(for: settings.handshakeTimeout)
        if !Task.isCancelled, session == nil {
            outbox.close(.policyViolation("no connect within \(settings.handshakeTimeout)"))
        }
    }

    /// A token's expiry: at `expiresAt` the client gets `error` `unauthorized` (no `id`); if
    /// no `connect` with a fresh token for the same user arrives within `refreshGrace`, the
    /// socket is closed with 1008. A refresh moves the deadline and starts over.
    private func enforceExpiry() async {
        await expiry.watch({ self.session }) { error in
            engine.metrics.error(error.code)
            outbox.enqueue(frames.error(error, id: nil))
        }
        if !Task.isCancelled { outbox.close(.policyViolation("token expired")) }
    }

    // MARK: Reading

    private func readLoop(_ inbound: WebSocketInboundStream) async {
        let decoder = ClientFrameDecoder()
        do {
            for try await message in inbound.messages(maxSize: settings.limits.maxFrameBytes) {
                // Once the server is closing the socket, what still arrives is ignored; the
                // reader keeps draining until the client answers the close, so that it never
                // ends (and cancels the writer) before the writer sent its close code.
                if outbox.isClosing { continue }
                guard case .text(let text) = message else {
                    outbox.close(.policyViolation("binary frames are not supported"))
                    continue
                }
                switch decoder.decode(text) {
                case .success(let (id, command)):
                    await handle(command, id: id)
                case .failure(let failure):
                    reply(error: failure.error, id: failure.id)
                }
            }
        } catch {
            logger.debug("websocket read ended", metadata: ["error": "\(error)"])
        }
    }

    private func handle(_ command: ClientCommand, id: FrameID?) async {
        do {
            try await perform(command, id: id)
            state.withLock { $0.badFrames = 0 }
        } catch let error as ParleyError {
            reply(error: error, id: id)
        } catch {
            logger.error("command failed", metadata: ["error": "\(error)"])
            reply(error: ParleyError(.internal, "internal error"), id: id)
        }
    }

    private func reply(error: ParleyError, id: FrameID?) {
        engine.metrics.error(error.code)
        outbox.enqueue(frames.error(error, id: id))
        guard error.code == .badRequest else { return }
        let bad = state.withLock { state in
            state.badFrames += 1
            return state.badFrames
        }
        if bad >= settings.limits.maxConsecutiveBadFrames {
            outbox.close(.policyViolation("too many bad frames in a row"))
        }
    }

    private func perform(_ command: ClientCommand, id: FrameID?) async throws {
        if case .ping = command {
            outbox.enqueue(frames.pong(id))
            return
        }
        if case .connect(let token, let user) = command {
            try await connect(token: token, user: user, id: id)
            return
        }
        guard let session else {
            throw ParleyError(.unauthorized, "send connect first")
        }
        switch command {
        case .join, .leave, .presence: try engine.charge(session)
        case .history(_, _, _, let limit): try engine.charge(session, historyLimit: limit ?? settings.limits.defaultHistoryLimit)
        default: break
        }
        switch command {
        case .join(let room, let since):
            try await engine.join(session, room: room, since: since) { joined in
                ack(id, fields: { json in
                    json.key("room"); json.string(joined.room)
                    json.key("seq"); json.number(joined.seq)
                    json.key("users"); WireJSON.users(joined.users, into: &json)
                })
            }
        case .leave(let room):
            try await engine.leave(session, room: room)
            ack(id, fields: { json in json.key("room"); json.string(room) })
        case .message(let room, let content, let clientId):
            // The ack is queued as soon as the message is stored, ahead of the room's deliveries.
            try await engine.publish(session.identity, room: room, content: content, clientId: clientId, session: session) { stored in
                ack(id, value: { WireJSON.message(stored.message, into: &$0) })
            }
        case .typing(let room, let typing):
            try await engine.typing(session, room: room, typing: typing)
            ack(id, fields: { _ in })
        case .read(let room, let seq):
            try await engine.read(session, room: room, seq: seq)
            ack(id, fields: { json in
                json.key("room"); json.string(room)
                json.key("seq"); json.number(seq)
            })
        case .history(let room, let before, let after, let limit):
            let page = try await engine.history(session.identity, room: room, before: before, after: after, limit: limit)
            ack(id, value: { WireJSON.page(page, into: &$0) })
        case .presence(let room):
            let users = try await engine.presence(session.identity, room: room)
            ack(id, fields: { json in
                json.key("room"); json.string(room)
                json.key("users"); WireJSON.users(users, into: &json)
            })
        case .connect, .ping:
            break
        }
    }

    /// Queues an ack whose data object has the fields `fields` writes. A frame without an id
    /// gets no ack (errors are always sent).
    private func ack(_ id: FrameID?, fields: (inout JSONWriter) -> Void) {
        ack(id, value: { $0.object(fields) })
    }

    private func ack(_ id: FrameID?, value: (inout JSONWriter) -> Void) {
        guard id != nil else { return }
        outbox.enqueue(frames.ack(id, data: value))
    }

    private func connect(token: String?, user: String?, id: FrameID?) async throws {
        if let session, let token {
            try await refresh(session, token: token, user: user)
        } else if let session {
            guard user == nil || user == session.user else {
                throw ParleyError.badRequest("already connected as \(session.user)")
            }
        } else {
            try open(try await authenticator.authenticate(token: token, user: user))
        }
        guard let session else { return }
        ack(id, fields: { json in
            json.key("user"); json.string(session.user)
            json.key("session"); json.string(session.id)
        })
    }

    /// `connect` with a token on an open session: a fresh credential for the same user
    /// replaces the session's expiry and room patterns; rooms the new token no longer allows
    /// are left. Another user is `forbidden`; an invalid token `unauthorized` (the old one
    /// keeps running out).
    private func refresh(_ session: Session, token: String, user: String?) async throws {
        let identity = try await authenticator.authenticate(token: token, user: user ?? session.user)
        try await engine.refresh(session, with: identity)
        expiry.poke()
    }
}
