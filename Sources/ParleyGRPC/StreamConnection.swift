import GRPCCore
import Logging
import NIOCore
import ParleyCore
import Synchronization

/// One `JoinChat` or `Chat` stream: a `Connection` (the protocol shared with every transport)
/// whose outbox one writer drains onto the stream. A slow reader fills only its own outbox and
/// its stream ends with RESOURCE_EXHAUSTED, exactly like a slow WebSocket gets 1013.
final class StreamConnection: Sendable {
    private struct State {
        /// The status the stream ends with, when the server ends it for a reason of its own.
        var endStatus: RPCError?
        /// The client cancelled the call: nobody is listening for a status.
        var cancelled = false
    }

    private let service: ChatService
    private let connection: Connection
    private let state = Mutex(State())
    /// The stream's place in the connection limits, given back when it ends.
    private let ticket: ConnectionLimiter.Ticket

    /// Counts the stream against the connection limits (total and per client address, as for
    /// WebSockets); throws when one is reached. `peer` is gRPC's `ipv4:host:port` form.
    init(service: ChatService, peer: String) throws(ParleyError) {
        self.service = service
        self.ticket = try service.engine.connections.acquire(address: Self.address(ofPeer: peer))
        self.connection = Connection(
            engine: service.engine, authenticator: service.authenticator, format: ProtoEventEncoder.shared,
            settings: .init(
                transport: "grpc", handshakeTimeout: service.settings.handshakeTimeout,
                refreshGrace: service.settings.refreshGrace, backendsMayConnect: true
            ),
            clock: service.clock, logger: service.logger
        )
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
    private var outbox: Outbox { connection.outbox }

    /// Ends the stream at once with `status`; what is still queued is dropped.
    private func end(_ status: RPCError) {
        state.withLock { if $0.endStatus == nil { $0.endStatus = status } }
        connection.close(.policyViolation(status.message))
    }

    // MARK: JoinChat

    /// Serves a stream whose session opens with `identity` and joins `room` while the writer
    /// runs; a failure of the join ends the stream with its status.
    func serve(_ writer: RPCWriter<ByteBuffer>, identity: Identity, room: String, since: Int64?) async throws {
        do {
            try connection.start(identity: identity, notifications: false)
        } catch {
            ticket.release()
            throw service.failure(error)
        }
        // The stream is over when a task returns true: the writer, or the cut-off watch; the
        // join may still be replaying.
        await whileNotCancelled { await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                do {
                    // Acked with an empty request id: the stream's first event.
                    try await self.connection.perform(.join(room: room, since: since), id: .string(""))
                } catch {
                    self.end(self.service.failure(error))
                }
                return false
            }
            group.addTask { await self.writeLoop(writer); return true }
            group.addTask { await self.watchForCutOff() }
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
    /// when the call's metadata authenticated a user; a backend credential (API key) waits for
    /// `connect{user}`; otherwise `connect` must come first.
    func serveCommands(
        _ writer: RPCWriter<ByteBuffer>, identity: Identity?,
        commands: RPCAsyncSequence<Chat_V1_ChatCommand, any Error>
    ) async throws {
        do {
            if let identity, identity.isBackend {
                try connection.start(identity: nil, backend: identity)
            } else {
                try connection.start(identity: identity)
            }
        } catch {
            ticket.release()
            throw service.failure(error)
        }
        // The stream is over when a task returns true: the writer, or the cut-off watch. The
        // client ending its half of the stream only means no more commands: events keep flowing
        // until the client cancels the call or the server ends it.
        await whileNotCancelled { await withTaskGroup(of: Bool.self) { group in
            group.addTask { await self.writeLoop(writer); return true }
            group.addTask { await self.readLoop(commands); return false }
            group.addTask { await self.watchForCutOff() }
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

    private func readLoop(_ commands: RPCAsyncSequence<Chat_V1_ChatCommand, any Error>) async {
        do {
            for try await command in commands {
                if outbox.isClosing { break }
                let id: RequestID? = command.requestID.isEmpty ? nil : .string(command.requestID)
                switch Result(catching: { () throws(ParleyError) -> Command in try Command(command) }) {
                case .success(let command): await connection.receive(command, id: id)
                case .failure(let error): connection.reject(error, id: id)
                }
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
        ticket.release()
        await connection.finish()
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
        case .unauthenticated(let why):
            RPCError(code: .unauthenticated, message: why)
        case .serverError(let why):
            RPCError(code: .internalError, message: why)
        }
    }
}

extension Command {
    /// The command a `ChatCommand` carries; `bad_request` when it carries none.
    init(_ command: Chat_V1_ChatCommand) throws(ParleyError) {
        guard let body = command.command else {
            throw ParleyError.badRequest("command: none set (expected connect, join, dm, rooms, search, leave, message, edit, delete, react, moderate, call, signal, typing, read, history, presence or ping)")
        }
        switch body {
        case .connect(let connect):
            self = .connect(token: connect.token.nonEmpty, user: connect.user.nonEmpty)
        case .join(let join):
            self = .join(room: join.roomID, since: join.hasSinceSeq ? join.sinceSeq : nil)
        case .dm(let direct):
            self = .direct(user: direct.userID, since: direct.hasSinceSeq ? direct.sinceSeq : nil)
        case .leave(let leave):
            self = .leave(room: leave.roomID)
        case .message(let message):
            self = .message(
                room: message.roomID, content: message.content, clientId: message.hasClientID ? message.clientID : nil,
                replyTo: message.hasReplyTo ? message.replyTo : nil, attachments: message.attachmentIds
            )
        case .edit(let edit):
            self = .change(
                room: edit.roomID, id: edit.messageID, action: .edit, content: edit.content, clientId: edit.hasClientID ? edit.clientID : nil
            )
        case .delete(let delete):
            self = .change(room: delete.roomID, id: delete.messageID, action: .delete, content: "", clientId: delete.hasClientID ? delete.clientID : nil)
        case .react(let react):
            let intent: MessageChange.ReactionIntent = react.hasAdd ? (react.add ? .add : .remove) : .toggle
            self = .change(
                room: react.roomID, id: react.messageID, action: .react(intent), content: react.emoji, clientId: react.hasClientID ? react.clientID : nil
            )
        case .moderate(let moderate):
            guard let action = moderate.action.kind, action.isModeration else {
                throw ParleyError.badRequest("action must be MESSAGE_KIND_KICK, _MUTE, _UNMUTE, _BAN or _UNBAN")
            }
            self = .moderate(
                room: moderate.roomID, user: moderate.userID, action: action, seconds: moderate.hasSeconds ? moderate.seconds : nil,
                reason: moderate.hasReason ? moderate.reason : nil, clientId: moderate.hasClientID ? moderate.clientID : nil
            )
        case .call(let call):
            self = .call(user: call.userID, video: call.video)
        case .signal(let signal):
            guard let kind = CallSignal.Kind(rawValue: signal.type) else { throw ParleyError.badRequest("signal.type: unknown type '\(signal.type)'") }
            self = .signal(
                call: signal.call, kind: kind, data: signal.hasData ? signal.data : nil, toSession: signal.hasToSession ? signal.toSession : nil
            )
        case .visibility(let visibility):
            self = .visibility(visible: visibility.visible)
        case .typing(let typing):
            self = .typing(room: typing.roomID, typing: typing.typing)
        case .read(let read):
            self = .read(room: read.roomID, seq: read.seq)
        case .history(let history):
            self = .history(
                room: history.roomID, before: history.hasBeforeSeq ? history.beforeSeq : nil,
                after: history.hasAfterSeq ? history.afterSeq : nil, limit: history.hasLimit ? Int(history.limit) : nil
            )
        case .presence(let presence):
            self = .presence(
                room: presence.roomID, after: presence.hasAfterUser ? presence.afterUser : nil,
                limit: presence.hasLimit ? Int(presence.limit) : nil
            )
        case .rooms:
            self = .inbox
        case .search(let search):
            self = .search(text: search.text, before: search.hasBeforeID ? search.beforeID : nil, limit: search.hasLimit ? Int(search.limit) : nil)
        case .ping:
            self = .ping
        }
    }
}
