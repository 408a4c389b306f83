import GRPCCore
import Logging
import NIOCore
import ParleyCore
import Synchronization

/// One `JoinChat` or `Chat` stream as an engine session: replies and room events share the
/// session's bounded outbox, and one writer drains it onto the stream, so a client sees them in
/// the order the server produced them. A slow reader fills only its own outbox and its stream
/// ends with RESOURCE_EXHAUSTED, exactly like a slow WebSocket gets 1013.
final class StreamConnection: Sendable {
    private struct State {
        var session: Session?
        /// The status the stream ends with, when the server ends it for a reason of its own.
        var endStatus: RPCError?
        var badCommands = 0
        /// The client cancelled the call: nobody is listening for a status.
        var cancelled = false
        /// The backend credential of the call's metadata, until `connect` names its user.
        var backend: Identity?
    }

    private let service: ChatService
    private let outbox: Outbox
    private let encoder = ProtoEventEncoder.shared
    private let state = Mutex(State())
    private let expiry: TokenExpiry
    /// The stream's place in the connection limits, given back when it ends.
    private let ticket: ConnectionLimiter.Ticket

    /// Counts the stream against the connection limits (total and per client address, as for
    /// WebSockets); throws when one is reached. `peer` is gRPC's `ipv4:host:port` form.
    init(service: ChatService, peer: String) throws(ParleyError) {
        self.service = service
        self.outbox = Outbox(maxBytes: service.settings.limits.maxOutboxBytes)
        self.expiry = TokenExpiry(grace: service.settings.refreshGrace)
        self.ticket = try service.engine.connections.acquire(address: Self.address(ofPeer: peer))
    }

    /// The client's IP address in a gRPC peer string (`ipv4:1.2.3.4:5`, `ipv6:[::1]:5`).
    static func address(ofPeer peer: String) -> String? {
        if peer.hasPrefix("ipv6:["), let end = peer.firstIndex(of: "]") {
            return String(peer[peer.index(peer.startIndex, offsetBy: 6)..<end])
        }
        guard peer.hasPrefix("ipv4:"), let colon = peer.lastIndex(of: ":") else { return nil }
        let host = peer[peer.index(peer.startIndex, offsetBy: 5)..<colon]
        return host.isEmpty ? nil : String(host)
    }

    private var engine: Engine { service.engine }
    private var session: Session? { state.withLock { $0.session } }

    /// Queues a reply for this stream alone.
    func send(_ event: Chat_V1_ChatEvent) {
        outbox.enqueue(encoder.encode(event))
    }

    /// Ends the stream at once with `status`; what is still queued is dropped.
    private func end(_ status: RPCError) {
        state.withLock { if $0.endStatus == nil { $0.endStatus = status } }
        outbox.close(.policyViolation(status.message))
    }

    private func open(_ identity: Identity) throws(ParleyError) -> Session {
        let session = try engine.connect(identity, transport: "grpc", encoder: encoder, outbox: outbox)
        state.withLock { $0.session = session }
        expiry.poke()
        return session
    }

    /// Ends the stream with UNAUTHENTICATED once its token expired and no fresh one came
    /// within the grace period (only `Chat` can send one, with `connect`); the client is warned
    /// with an `error` event at expiry.
    private func enforceExpiry() async {
        guard !service.authenticator.isOpen else { return }
        await expiry.watch({ self.session }) { error in
            engine.metrics.error(error.code)
            send(.error(error, requestID: ""))
        }
        if !Task.isCancelled { end(RPCError(code: .unauthenticated, message: "token expired")) }
    }

    // MARK: JoinChat

    /// Serves a stream that `start` sets up (joins its room) while the writer runs; a failure
    /// of `start` ends the stream with its status.
    func serve(
        _ writer: RPCWriter<ByteBuffer>, identity: Identity,
        start: @escaping @Sendable (Session) async throws -> Void
    ) async throws {
        let session: Session
        do {
            session = try open(identity)
        } catch {
            ticket.release()
            throw service.failure(error)
        }
        // The stream is over when a task returns true: the writer, or the cut-off watch; `start`
        // may still be replaying.
        await whileNotCancelled { await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                do {
                    try await start(session)
                } catch {
                    self.end(self.service.failure(error))
                }
                return false
            }
            group.addTask { await self.writeLoop(writer); return true }
            group.addTask { await self.watchForCutOff() }
            group.addTask { await self.enforceExpiry(); return false }
            while let ended = await group.next(), !ended {}
            self.outbox.close(.goingAway)
            group.cancelAll()
        } }
        try await finish()
    }

    /// Runs `body`, ending the stream when the client cancels the call (or its connection
    /// drops): gRPC reports that through a handler, not by cancelling the task.
    private func whileNotCancelled(_ body: () async -> Void) async {
        await withRPCCancellationHandler {
            await body()
        } onCancelRPC: { [self] in
            state.withLock { $0.cancelled = true }
            outbox.close(.goingAway)
        }
    }

    // MARK: Chat

    /// Serves a bidirectional stream: commands in, replies and events out. `identity` is set
    /// when the call's metadata authenticated it; otherwise `connect` must come first.
    func serveCommands(
        _ writer: RPCWriter<ByteBuffer>, identity: Identity?,
        commands: RPCAsyncSequence<Chat_V1_ChatCommand, any Error>
    ) async throws {
        // A backend (API key) opens its session with `connect{user}`: the user it acts as.
        let opened = identity?.isBackend == true ? nil : identity
        state.withLock { $0.backend = identity?.isBackend == true ? identity : nil }
        if let opened {
            do {
                _ = try open(opened)
            } catch {
                ticket.release()
                throw service.failure(error)
            }
        }
        // The stream is over when a task returns true: the writer, or the cut-off watch. The
        // client ending its half of the stream only means no more commands: events keep flowing
        // until the client cancels the call or the server ends it.
        await whileNotCancelled { await withTaskGroup(of: Bool.self) { group in
            group.addTask { await self.writeLoop(writer); return true }
            group.addTask { await self.readLoop(commands); return false }
            group.addTask { await self.watchForCutOff() }
            group.addTask { await self.enforceExpiry(); return false }
            if opened == nil {
                group.addTask { await self.enforceHandshakeTimeout(); return false }
            }
            while let ended = await group.next(), !ended {}
            self.outbox.close(.goingAway)
            group.cancelAll()
        } }
        try await finish()
    }

    /// Returns true (ending the stream at once) when the outbox is cut off for any reason but
    /// shutdown: a writer blocked by HTTP/2 flow control on a reader that stopped would
    /// otherwise never notice. Shutdown lets the writer send what is queued first.
    private func watchForCutOff() async -> Bool {
        let reason = await outbox.closed()
        guard reason != .goingAway else { return false }
        if reason == .slowConsumer { engine.metrics.slowConsumer() }
        state.withLock { if $0.endStatus == nil { $0.endStatus = Self.status(reason) } }
        return true
    }

    private func enforceHandshakeTimeout() async {
        let timeout = service.settings.handshakeTimeout
        try? await Task.sleep(for: timeout)
        if !Task.isCancelled, session == nil {
            end(RPCError(code: .unauthenticated, message: "no connect within \(timeout)"))
        }
    }

    private func readLoop(_ commands: RPCAsyncSequence<Chat_V1_ChatCommand, any Error>) async {
        do {
            for try await command in commands {
                if outbox.isClosing { break }
                await handle(command)
            }
        } catch let error as RPCError where error.code == .resourceExhausted || error.code == .invalidArgument {
            // A command over the size limit, or not protobuf: as a WebSocket closes with
            // 1009/1008, the stream ends with its status.
            end(error)
        } catch {
            // The client went away; the writer ends with the call.
            service.logger.debug("gRPC command stream ended", metadata: ["error": "\(error)"])
        }
    }

    private func handle(_ command: Chat_V1_ChatCommand) async {
        let requestID = command.requestID
        do {
            try await perform(command)
            state.withLock { $0.badCommands = 0 }
        } catch {
            let error = (error as? ParleyError) ?? ParleyError(.internal, "internal error")
            if error.code == .internal { service.logger.error("gRPC command failed", metadata: ["error": "\(error)"]) }
            reply(error: error, requestID: requestID)
        }
    }

    private func reply(error: ParleyError, requestID: String) {
        engine.metrics.error(error.code)
        send(.error(error, requestID: requestID))
        guard error.code == .badRequest else { return }
        let bad = state.withLock { state in
            state.badCommands += 1
            return state.badCommands
        }
        if bad >= service.settings.limits.maxConsecutiveBadFrames {
            end(RPCError(code: .invalidArgument, message: "too many bad commands in a row"))
        }
    }

    private func perform(_ command: Chat_V1_ChatCommand) async throws {
        let requestID = command.requestID
        func ack(_ result: Chat_V1_Ack.OneOf_Result) {
            if !requestID.isEmpty { send(.ack(requestID, result)) }
        }
        guard let body = command.command else {
            throw ParleyError.badRequest("command: none set (expected connect, join, leave, message, typing, read, history, presence or ping)")
        }
        if case .ping = body {
            send(.pong(requestID))
            return
        }
        if case .connect(let connect) = body {
            let session = try await self.connect(token: connect.token.nonEmpty, user: connect.user.nonEmpty)
            ack(.connect(.with {
                $0.userID = session.user
                $0.session = session.id
            }))
            return
        }
        guard let session else { throw ParleyError(.unauthorized, "send connect first") }
        switch body {
        case .join, .leave, .presence: try engine.charge(session)
        case .history(let request): try engine.charge(session, historyLimit: request.hasLimit ? Int(request.limit) : engine.limits.defaultHistoryLimit)
        default: break
        }
        switch body {
        case .join(let join):
            try await engine.join(session, room: join.roomID, since: join.hasSinceSeq ? join.sinceSeq : nil) { joined in
                ack(.join(Chat_V1_JoinResult(joined)))
            }
        case .leave(let leave):
            try await engine.leave(session, room: leave.roomID)
            ack(.leave(.with { $0.roomID = leave.roomID }))
        case .message(let message):
            // The ack is queued as soon as the message is stored, ahead of the room's deliveries.
            try await engine.publish(
                session.identity, room: message.roomID, content: message.content,
                clientId: message.hasClientID ? message.clientID : nil, session: session
            ) { stored in
                ack(.message(.with {
                    $0.message = Chat_V1_ChatMessage(stored.message)
                    $0.duplicate = stored.duplicate
                }))
            }
        case .typing(let typing):
            try await engine.typing(session, room: typing.roomID, typing: typing.typing)
            ack(.typing(.with {
                $0.roomID = typing.roomID
                $0.typing = typing.typing
            }))
        case .read(let read):
            try await engine.read(session, room: read.roomID, seq: read.seq)
            ack(.read(.with {
                $0.roomID = read.roomID
                $0.seq = read.seq
            }))
        case .history(let request):
            let page = try await service.history(request, identity: session.identity)
            ack(.history(Chat_V1_HistoryResponse(page)))
        case .presence(let request):
            let users = try await engine.presence(session.identity, room: request.roomID)
            ack(.presence(Chat_V1_PresenceResponse(room: request.roomID, users: users)))
        case .connect, .ping:
            break
        }
    }

    /// `connect`: opens the session; on an open one, a token is a refresh (same user only)
    /// that moves the expiry and may narrow the rooms.
    private func connect(token: String?, user: String?) async throws -> Session {
        if let session {
            if let token {
                try await engine.refresh(session, with: service.authenticator.authenticate(token: token, user: user ?? session.user))
                expiry.poke()
            } else if let user, user != session.user {
                throw ParleyError.badRequest("already connected as \(session.user)")
            }
            return session
        }
        let identity = if token == nil, let backend = state.withLock({ $0.backend }) {
            backend
        } else {
            try await service.authenticator.authenticate(token: token, user: user)
        }
        return try open(try service.acting(identity, as: user ?? ""))
    }

    // MARK: Writing

    private func writeLoop(_ writer: RPCWriter<ByteBuffer>) async {
        do {
            while true {
                switch await outbox.next() {
                case .frames(let batch):
                    try await writer.write(contentsOf: batch.map(\.bytes))
                    engine.metrics.recordDeliveries(batch)
                case .closed(let reason):
                    // Cut-offs are handled by `watchForCutOff`; only shutdown ends here.
                    if reason == .goingAway, !Task.isCancelled {
                        state.withLock { if $0.endStatus == nil, !$0.cancelled { $0.endStatus = Self.status(reason) } }
                    }
                    return
                }
            }
        } catch {
            service.logger.debug("gRPC stream write failed", metadata: ["error": "\(error)"])
        }
    }

    /// Leaves the session's rooms and ends the call with the status the server chose, if any.
    private func finish() async throws {
        outbox.close(.goingAway)
        ticket.release()
        if let session { await engine.disconnect(session) }
        if let status = state.withLock({ $0.endStatus }) { throw status }
    }

    static func status(_ reason: CloseReason) -> RPCError {
        switch reason {
        case .slowConsumer:
            RPCError(code: .resourceExhausted, message: "slow consumer: reconnect and resume with since_seq")
        case .goingAway:
            RPCError(code: .unavailable, message: "server shutting down: reconnect and resume with since_seq")
        case .policyViolation(let why):
            RPCError(code: .invalidArgument, message: why)
        case .serverError(let why):
            RPCError(code: .internalError, message: why)
        }
    }
}
