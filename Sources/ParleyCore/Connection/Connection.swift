import Logging
import NIOCore
import Synchronization

/// The protocol of one client connection, whatever carries it: opening and refreshing the
/// session, which credentials may open one, the handshake and token-expiry deadlines, the
/// bad-command count, the order of commands, and the bounded outbox that replies and room
/// events share (so a client sees them in the order the server produced them).
///
/// A transport only turns its bytes into `Command`s (`submit`, or `receive` from an async
/// reader), writes what the outbox holds, and maps the outbox's close reason to its own
/// close code or status. Time comes from a `ParleyClock`: tests move a `ManualClock`.
public final class Connection: Sendable {
    public struct Settings: Sendable {
        /// The transport's name, for metrics: `websocket`, `grpc`, `sse`.
        public var transport: String
        /// How long a connection that did not authenticate when it opened has to send `connect`.
        public var handshakeTimeout: Duration
        /// How long a connection whose token expired has to send `connect` with a fresh one.
        public var refreshGrace: Duration
        /// Whether a backend credential (API key) may open a session, acting as the user that
        /// `connect` names. Backends speak gRPC; an API key has no place in a browser, so the
        /// WebSocket refuses it (`forbidden`).
        public var backendsMayConnect: Bool
        /// False for a one-way stream (SSE): no command can refresh its token, so at expiry it
        /// gets the `unauthorized` error and ends (what is queued goes out first).
        public var acceptsCommands: Bool

        public init(
            transport: String, handshakeTimeout: Duration, refreshGrace: Duration = .seconds(30),
            backendsMayConnect: Bool = false, acceptsCommands: Bool = true
        ) {
            self.transport = transport
            self.handshakeTimeout = handshakeTimeout
            self.refreshGrace = refreshGrace
            self.backendsMayConnect = backendsMayConnect
            self.acceptsCommands = acceptsCommands
        }
    }

    private struct State {
        var session: Session?
        /// A backend credential the transport authenticated, waiting for `connect{user}`.
        var backend: Identity?
        var badCommands = 0
        var handshake: ScheduledCall?
        var expiry: ScheduledCall?
        /// The expiry the client was warned about.
        var warnedAt: Timestamp?
        /// Commands submitted and not yet performed, in order, with the frames that could not
        /// be decoded among them (answered in their turn).
        var queued: [(item: Result<Command, ParleyError>, id: RequestID?)] = []
        var performing = false
        /// The transport was told to stop reading until the queue drains.
        var paused = false
        var finished = false
        var notifications = true
    }

    /// Commands a client may have in flight before its transport stops reading from it.
    public static let maxQueuedCommands = 64

    /// What every connection of a transport shares: one object, made once per server, rather
    /// than five fields in each connection (an idle WebSocket's memory counts).
    public final class Environment: Sendable {
        let engine: Engine
        let authenticator: any Authenticator
        let format: any WireFormat
        let settings: Settings
        let logger: Logger

        public init(engine: Engine, authenticator: any Authenticator, format: any WireFormat, settings: Settings, logger: Logger) {
            self.engine = engine
            self.authenticator = authenticator
            self.format = format
            self.settings = settings
            self.logger = logger
        }
    }

    private let environment: Environment
    public let outbox: Outbox
    private let clock: any ParleyClock
    private let state = Mutex(State())
    /// Called when a paused transport may read again.
    private let resumeReading: (@Sendable () -> Void)?

    public var engine: Engine { environment.engine }
    public var format: any WireFormat { environment.format }
    private var authenticator: any Authenticator { environment.authenticator }
    private var settings: Settings { environment.settings }
    private var logger: Logger { environment.logger }

    /// `outbox`: the transport's (a pushed one), or a new pulled one bounded by
    /// `limits.maxOutboxBytes`.
    public init(environment: Environment, clock: any ParleyClock, outbox: Outbox? = nil, resumeReading: (@Sendable () -> Void)? = nil) {
        self.environment = environment
        self.clock = clock
        self.outbox = outbox ?? Outbox(maxBytes: environment.engine.limits.maxOutboxBytes)
        self.resumeReading = resumeReading
    }

    /// A connection with an environment of its own.
    public convenience init(
        engine: Engine, authenticator: any Authenticator, format: any WireFormat, settings: Settings,
        clock: any ParleyClock, outbox: Outbox? = nil, logger: Logger, resumeReading: (@Sendable () -> Void)? = nil
    ) {
        self.init(
            environment: Environment(engine: engine, authenticator: authenticator, format: format, settings: settings, logger: logger),
            clock: clock, outbox: outbox, resumeReading: resumeReading
        )
    }

    public var session: Session? { state.withLock { $0.session } }

    // MARK: Opening

    /// Starts the connection. `identity`: the user the transport authenticated as it opened
    /// (a token in the upgrade request or the call's metadata); the session opens now. Without
    /// one, `connect` must come within the handshake timeout. `backend`: a backend credential
    /// from the call's metadata, which `connect{user}` turns into a session acting as that user.
    /// A `watcher` session follows rooms without being present in them (an anonymous or
    /// backend SSE reader).
    /// `notifications`: the session also receives the events addressed to its user (`notify`),
    /// as a full client connection does; a one-room stream (SSE, gRPC `JoinChat`) does not.
    public func start(identity: Identity?, backend: Identity? = nil, watcher: Bool = false, notifications: Bool = true) throws(ParleyError) {
        state.withLock { $0.notifications = notifications }
        if let identity {
            try open(identity, watcher: watcher)
            return
        }
        if let backend {
            guard settings.backendsMayConnect else { throw Self.backendRefused }
            state.withLock { $0.backend = backend }
        }
        let timeout = settings.handshakeTimeout
        let call = clock.schedule(in: timeout) { [weak self] in
            guard let self, self.session == nil else { return }
            self.outbox.close(.unauthenticated("no connect within \(timeout)"))
        }
        state.withLock { $0.handshake = call }
    }

    static let backendRefused = ParleyError(.forbidden, "API keys are for backend HTTP calls; streams and WebSockets need a user token")

    @discardableResult
    private func open(_ identity: Identity, watcher: Bool = false) throws(ParleyError) -> Session {
        if identity.isBackend, !settings.backendsMayConnect { throw Self.backendRefused }
        let notifications = state.withLock { $0.notifications }
        let session = try engine.connect(
            identity, transport: settings.transport, encoder: format, outbox: outbox, watcher: watcher, notifications: notifications
        )
        let handshake = state.withLock { state in
            state.session = session
            return state.handshake.take()
        }
        handshake?.cancel()
        scheduleExpiry()
        return session
    }

    // MARK: Expiry

    /// Looks at the session's expiry now: warns once when it passed (`error` `unauthorized`,
    /// no id), closes the connection when the grace passed too, and schedules the next look.
    /// A refresh calls it again with the new expiry.
    private func scheduleExpiry() {
        guard let session, let expiresAt = session.identity.expiresAt else {
            state.withLock { $0.expiry.take() }?.cancel()
            return
        }
        let now = clock.now
        if !settings.acceptsCommands {
            guard now < expiresAt else {
                let error = ParleyError(.unauthorized, "token expired")
                engine.metrics.error(error.code)
                outbox.enqueue(format.encode(error, id: nil))
                outbox.close(.goingAway)
                return
            }
            let call = clock.schedule(in: .milliseconds(expiresAt.milliseconds - now.milliseconds)) { [weak self] in
                self?.scheduleExpiry()
            }
            state.withLock { $0.expiry = call }
            return
        }
        let grace = settings.refreshGrace
        let closesAt = expiresAt.adding(milliseconds: grace.milliseconds)
        let next: Timestamp
        if now < expiresAt {
            next = expiresAt
        } else if now < closesAt {
            let warn = state.withLock { state in
                defer { state.warnedAt = expiresAt }
                return state.warnedAt != expiresAt
            }
            if warn {
                let error = ParleyError(.unauthorized, "token expired; send connect with a fresh token within \(grace)")
                engine.metrics.error(error.code)
                outbox.enqueue(format.encode(error, id: nil))
            }
            next = closesAt
        } else {
            state.withLock { $0.expiry.take() }?.cancel()
            outbox.close(.unauthenticated("token expired"))
            return
        }
        let call = clock.schedule(in: .milliseconds(next.milliseconds - now.milliseconds)) { [weak self] in
            self?.scheduleExpiry()
        }
        let previous = state.withLock { state in
            defer { state.expiry = call }
            return state.expiry
        }
        previous?.cancel()
    }

    // MARK: Commands

    /// Queues a command decoded by a transport that reads on an event loop; commands are
    /// performed one at a time, in order, by at most one task per connection (none while the
    /// client is quiet). Returns false when the transport should stop reading until
    /// `resumeReading` is called: the client sends faster than its commands are served.
    public func submit(_ command: Command, id: RequestID?) -> Bool {
        submit(.success(command), id: id)
    }

    /// A frame the transport could not decode: answered with `error` after the commands
    /// submitted before it, so that replies keep the order of the frames, and counted as bad
    /// in that same order.
    public func submit(rejecting error: ParleyError, id: RequestID?) -> Bool {
        submit(.failure(error), id: id)
    }

    private func submit(_ item: Result<Command, ParleyError>, id: RequestID?) -> Bool {
        let (action, keepReading) = state.withLock { state -> (Submitted, Bool) in
            guard !state.finished else { return (.dropped, true) }
            if case .failure = item, !state.performing { return (.rejectNow, !state.paused) }
            state.queued.append((item, id))
            let start = !state.performing
            state.performing = true
            if state.queued.count >= Self.maxQueuedCommands { state.paused = true }
            return (start ? .start : .queued, !state.paused)
        }
        switch action {
        case .start: Task { await self.performQueued() }
        case .rejectNow: if case .failure(let error) = item { reject(error, id: id) }
        case .queued, .dropped: break
        }
        return keepReading
    }

    private enum Submitted { case start, queued, rejectNow, dropped }

    private func performQueued() async {
        while true {
            let (next, resume) = state.withLock { state -> ((Result<Command, ParleyError>, RequestID?)?, Bool) in
                guard !state.finished, !state.queued.isEmpty else {
                    state.performing = false
                    state.queued.removeAll()
                    defer { state.paused = false }
                    return (nil, state.paused)
                }
                return (state.queued.removeFirst(), false)
            }
            if resume { resumeReading?() }
            guard let (item, id) = next else { return }
            switch item {
            case .success(let command): await receive(command, id: id)
            case .failure(let error): if !outbox.isClosing { reject(error, id: id) }
            }
        }
    }

    /// Performs a command and queues its reply, or its error. Errors of `bad_request` count
    /// towards the bad-command limit (`limits.maxConsecutiveBadFrames`); any success resets it.
    public func receive(_ command: Command, id: RequestID?) async {
        if outbox.isClosing { return }
        do {
            try await perform(command, id: id)
            state.withLock { $0.badCommands = 0 }
        } catch let error as ParleyError {
            reject(error, id: id)
        } catch {
            logger.error("command failed", metadata: ["error": "\(error)"])
            reject(ParleyError(.internal, "internal error"), id: id)
        }
    }

    /// Answers a command that failed, or could not be decoded at all, with its error.
    public func reject(_ error: ParleyError, id: RequestID?) {
        engine.metrics.error(error.code)
        outbox.enqueue(format.encode(error, id: id))
        guard error.code == .badRequest else { return }
        let bad = state.withLock { state in
            state.badCommands += 1
            return state.badCommands
        }
        if bad >= engine.limits.maxConsecutiveBadFrames {
            outbox.close(.policyViolation("too many bad commands in a row"))
        }
    }

    /// Closes the connection for a reason of the transport's (a frame it cannot accept).
    public func close(_ reason: CloseReason) {
        outbox.close(reason)
    }

    /// Performs a command and queues its reply; throws its error instead of answering it.
    public func perform(_ command: Command, id: RequestID?) async throws {
        switch command {
        case .ping:
            reply(.pong, id: id)
            return
        case .connect(let token, let user):
            let session = try await connect(token: token, user: user)
            reply(.connected(user: session.user, session: session.id), id: id)
            return
        default:
            break
        }
        guard let session else { throw ParleyError(.unauthorized, "send connect first") }
        switch command {
        case .join, .direct, .leave, .presence, .inbox, .call, .signal, .visibility: try engine.charge(session)
        case .history(_, _, _, let limit), .search(_, _, let limit): try engine.charge(session, historyLimit: limit ?? engine.limits.defaultHistoryLimit)
        default: break
        }
        switch command {
        case .join(let room, let since):
            try await engine.join(session, room: room, since: since) { joined in
                reply(.joined(joined), id: id)
            }
        case .direct(let user, let since):
            let partner = try Validation.user(user, limits: engine.limits)
            try await engine.join(session, room: DirectRoom.name(session.user, partner), since: since) { joined in
                reply(.joined(joined), id: id)
            }
        case .leave(let room):
            try await engine.leave(session, room: room)
            reply(.left(room: room), id: id)
        case .message(let room, let content, let clientId, let replyTo, let attachments):
            // The ack is queued as soon as the message is stored, ahead of the room's deliveries.
            try await engine.publish(
                session.identity, room: room, content: content, clientId: clientId, replyTo: replyTo, attachments: attachments, session: session
            ) { stored in
                reply(.published(stored), id: id)
            }
        case .change(let room, let target, let action, let content, let clientId):
            try await engine.change(
                session.identity, room: room, target: target, action: action, content: content, clientId: clientId, session: session
            ) { stored in
                reply(.changed(stored.target ?? stored.message), id: id)
            }
        case .moderate(let room, let user, let action, let seconds, let reason, let clientId):
            try await engine.moderate(
                session.identity, room: room, user: user, action: action, duration: seconds.map { .seconds($0) }, reason: reason,
                clientId: clientId, session: session
            ) { stored in
                reply(.published(stored), id: id)
            }
        case .call(let user, let video):
            reply(.callStarted(try await engine.startCall(session, callee: user, video: video)), id: id)
        case .signal(let call, let kind, let data, let toSession):
            try await engine.signal(session, call: call, kind: kind, data: data, toSession: toSession)
            reply(.signaled, id: id)
        case .visibility(let visible):
            try await engine.setVisible(session, visible)
            reply(.visibility(visible: visible), id: id)
        case .typing(let room, let typing):
            try await engine.typing(session, room: room, typing: typing)
            reply(.typing(room: room, typing: typing), id: id)
        case .read(let room, let seq):
            try await engine.read(session, room: room, seq: seq)
            reply(.read(room: room, seq: seq), id: id)
        case .history(let room, let before, let after, let limit):
            let page = try await engine.history(session.identity, room: room, before: before, after: after, limit: limit)
            reply(.history(page), id: id)
        case .presence(let room, let after, let limit):
            reply(.presence(try await engine.presence(session.identity, room: room, after: after, limit: limit)), id: id)
        case .inbox:
            reply(.inbox(try await engine.inbox(session.identity)), id: id)
        case .search(let text, let before, let limit):
            reply(.searched(try await engine.search(session.identity, text: text, before: before, limit: limit)), id: id)
        case .connect, .ping:
            break
        }
    }

    private func reply(_ reply: Reply, id: RequestID?) {
        if let frame = format.encode(reply, id: id) { outbox.enqueue(frame) }
    }

    /// `connect`: opens the session; on an open one, a token is a refresh (same user only)
    /// that moves the expiry and may narrow the rooms; an invalid one is `unauthorized` and
    /// the old token keeps running out.
    private func connect(token: String?, user: String?) async throws -> Session {
        if let session {
            if let token {
                let identity = try await authenticator.authenticate(token: token, user: user ?? session.user)
                try await engine.refresh(session, with: identity)
                scheduleExpiry()
            } else if let user, user != session.user {
                throw ParleyError.badRequest("already connected as \(session.user)")
            }
            return session
        }
        let pending = state.withLock { $0.backend }
        let identity = if token == nil, let pending {
            pending
        } else {
            try await authenticator.authenticate(token: token, user: user)
        }
        if identity.isBackend, !settings.backendsMayConnect { throw Self.backendRefused }
        return try open(try identity.acting(as: user, field: "user", limits: engine.limits))
    }

    // MARK: Ending

    /// The transport is done with the connection (the client left, or the close was sent):
    /// cancels its deadlines and leaves its rooms.
    public func finish() async {
        let (handshake, expiry) = state.withLock { state in
            state.finished = true
            state.queued.removeAll()
            return (state.handshake.take(), state.expiry.take())
        }
        handshake?.cancel()
        expiry?.cancel()
        outbox.close(.goingAway)
        if let session { await engine.disconnect(session) }
    }
}
