import Foundation
import Logging
import NIOCore
import ParleyCore
import Synchronization

/// What every Socket.IO session of a server shares: where their commands go, settings and the
/// sessions by Engine.IO `sid` (a polling request or a WebSocket upgrade names its session).
final class SocketIOServer: Sendable {
    struct Settings: Sendable {
        var limits: Limits
        /// How long a new session has to send its `CONNECT`.
        var handshakeTimeout: Duration
        var refreshGrace: Duration
        /// Engine.IO heartbeat: the server pings this often...
        var pingInterval: Duration
        /// ... and a client that has not answered within this much more is gone.
        var pingTimeout: Duration = .seconds(20)
        /// Deadlines follow this clock; nil: real time on an event loop.
        var clock: (any ParleyClock)?
        /// The largest polling request body and WebSocket message a client may send.
        var maxPayload: Int { limits.maxFrameBytes }
    }

    /// What the sessions are served by: this process's engine (`parley serve`), or upstream
    /// instances over gRPC (`parley gateway`).
    struct Host: Sendable {
        /// Names this process in session ids.
        var instanceID: String
        var connections: ConnectionLimiter
        var isDraining: @Sendable () -> Bool
        var metrics: any SocketIOMetrics
        /// The link of a new session, given its clock, its outbox and how to resume reading.
        var link: @Sendable (_ clock: any ParleyClock, _ outbox: Outbox, _ resumeReading: @escaping @Sendable () -> Void) -> any SocketIOLink
    }

    let host: Host
    let settings: Settings
    let logger: Logger
    /// The other instances of a cluster, for polling requests that land on the wrong one.
    let peers: (any SocketIOPeers)?
    private let sessions = Mutex<[String: SocketIOSession]>([:])

    init(host: Host, settings: Settings, peers: (any SocketIOPeers)? = nil, logger: Logger) {
        self.host = host
        self.settings = settings
        self.peers = peers
        self.logger = logger
    }

    /// Sessions served by `engine` in this process.
    convenience init(engine: Engine, authenticator: any Authenticator, settings: Settings, peers: (any SocketIOPeers)? = nil, logger: Logger) {
        let environment = Connection.Environment(
            engine: engine, authenticator: authenticator, format: SocketIOFrames.shared,
            settings: .init(transport: "socketio", handshakeTimeout: settings.handshakeTimeout, refreshGrace: settings.refreshGrace),
            logger: logger
        )
        let host = Host(
            instanceID: engine.instanceID, connections: engine.connections, isDraining: { engine.isDraining }, metrics: engine.metrics,
            link: { clock, outbox, resumeReading in
                Connection(environment: environment, clock: clock, outbox: outbox, resumeReading: resumeReading)
            }
        )
        self.init(host: host, settings: settings, peers: peers, logger: logger)
    }

    /// A session id names its instance: `<instance id>.<random>`.
    func newSessionID() -> String {
        host.instanceID + "." + Self.newID()
    }

    /// The instance that holds session `sid`, when it is another one.
    func otherOwner(of sid: String) -> String? {
        guard let dot = sid.lastIndex(of: ".") else { return nil }
        let owner = String(sid[..<dot])
        return owner == host.instanceID ? nil : owner
    }

    func session(_ sid: String) -> SocketIOSession? {
        sessions.withLock { $0[sid] }
    }

    /// Opens a session whose slot (`ticket`) is given back when it ends.
    func open(transport: SocketIOSession.Transport, ticket: ConnectionLimiter.Ticket, eventLoop: any EventLoop) -> SocketIOSession {
        let session = SocketIOSession(server: self, transport: transport, ticket: ticket, eventLoop: eventLoop)
        sessions.withLock { $0[session.sid] = session }
        session.start()
        return session
    }

    func remove(_ session: SocketIOSession) {
        sessions.withLock { sessions in
            if sessions[session.sid] === session { sessions[session.sid] = nil }
        }
    }

    /// Open sessions.
    var count: Int { sessions.withLock { $0.count } }

    /// Closes every session for `reason` (after what is already queued for it).
    func closeAll(_ reason: CloseReason) {
        for session in sessions.withLock({ Array($0.values) }) { session.link.close(reason) }
    }

    /// A new Engine.IO session id: 120 random bits, URL-safe.
    static func newID() -> String {
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<15).map { _ in UInt8.random(in: 0...255, using: &generator) }
        return Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
    }
}

/// One Engine.IO session and the Socket.IO main namespace on it: HTTP long-polling until (and
/// unless) the client upgrades to a WebSocket, or a WebSocket from the start. The protocol of
/// the namespace (commands, session, deadlines, bad-command count, outbox) is its `Connection`;
/// this type only frames Engine.IO and Socket.IO packets around it and follows the positions
/// that connection state recovery sends back.
final class SocketIOSession: Sendable {
    enum Transport: Sendable {
        case polling
        case websocket(any SocketIOSocket)
    }

    /// What a polling `GET` found.
    enum Poll {
        /// Packets to send (the payload of the response); `ended` when they are the last.
        case packets([ByteBuffer], ended: Bool)
        /// Another `GET` is already waiting: the protocol closes the session.
        case overlapping
        /// The session has moved to a WebSocket or ended.
        case gone
    }

    private struct State {
        var transport: Transport
        /// The WebSocket that sent the `probe` and waits for `upgrade`.
        var probing: (any SocketIOSocket)?
        var writer = SocketIOWriter()
        var poll: CheckedContinuation<Void, Never>?
        var polling = false
        /// The outbox signalled while no `GET` was waiting.
        var readyWhileIdle = false
        var posting = false
        var namespace = Namespace.idle
        /// Events that came while `CONNECT` was being served, performed once it is.
        var early: [(Result<Command, ParleyError>, RequestID?)] = []
        var pid = SocketIOServer.newID()
        /// Binary attachments still to come for the last binary packet, and how to answer it.
        var attachments = 0
        var binaryAnswer: (RequestID?, ParleyError)?
        /// The client sends faster than its commands are served: its transport stops reading
        /// (a WebSocket's reads, the answer to a `POST`) until they are.
        var paused = false
        var pausedPost: CheckedContinuation<Void, Never>?
        /// The client sent something since the last ping.
        var heard = true
        var ping: ScheduledCall?
        var pongDeadline: ScheduledCall?
        var ended = false

        var upgraded: Bool {
            if case .websocket = transport { true } else { false }
        }
    }

    enum Namespace { case idle, connecting, connected }

    let sid: String
    let server: SocketIOServer
    /// The protocol of the namespace: this process's engine, or an upstream's.
    let link: any SocketIOLink
    private let state: Mutex<State>
    private let ticket: ConnectionLimiter.Ticket
    private let clock: any ParleyClock
    private var metrics: any SocketIOMetrics { server.host.metrics }
    private var settings: SocketIOServer.Settings { server.settings }

    fileprivate init(server: SocketIOServer, transport: Transport, ticket: ConnectionLimiter.Ticket, eventLoop: any EventLoop) {
        self.server = server
        self.sid = server.newSessionID()
        self.ticket = ticket
        self.state = Mutex(State(transport: transport))
        let clock = server.settings.clock ?? EventLoopClock(eventLoop: eventLoop)
        self.clock = clock
        let signal = SessionSignal()
        let outbox = Outbox(maxBytes: server.settings.limits.maxOutboxBytes) { signal.session.withLock { $0 }?.ready() }
        self.link = server.host.link(clock, outbox) { signal.session.withLock { $0 }?.resumeReading() }
        signalTarget = signal
        signal.session.withLock { $0 = self }
    }

    /// The outbox's way back to the session, cut when the session ends.
    private final class SessionSignal: Sendable {
        let session = Mutex<SocketIOSession?>(nil)
    }

    private let signalTarget: SessionSignal

    /// The `open` packet goes out first; the namespace's `CONNECT` must follow in time.
    fileprivate func start() {
        let upgrades = if case .polling = state.withLock({ $0.transport }) { ["websocket"] } else { [String]() }
        link.outbox.enqueue(SocketIOFrames.open(
            sid: sid, upgrades: upgrades, pingInterval: settings.pingInterval, pingTimeout: settings.pingTimeout,
            maxPayload: settings.maxPayload
        ))
        link.begin()
        schedulePing()
    }

    // MARK: Heartbeat

    private func schedulePing() {
        let call = clock.schedule(in: settings.pingInterval) { [weak self] in self?.ping() }
        state.withLock { $0.ping = call }
    }

    /// Every `pingInterval` the server pings; a client that sends nothing back within
    /// `pingTimeout` is gone (Engine.IO v4: the server pings, the client answers).
    private func ping() {
        let alive = state.withLock { state -> Bool in
            state.heard = false
            return !state.ended
        }
        guard alive else { return }
        link.outbox.enqueue(SocketIOFrames.ping)
        let deadline = clock.schedule(in: settings.pingTimeout) { [weak self] in
            guard let self, !self.state.withLock({ $0.heard || $0.ended }) else { return }
            self.server.logger.debug("socket.io ping timed out", metadata: ["sid": "\(self.sid)"])
            self.end()
        }
        let previous = state.withLock { state in
            defer { state.pongDeadline = deadline }
            return state.pongDeadline
        }
        previous?.cancel()
        schedulePing()
    }

    // MARK: Reading

    /// A text packet from the client, on whichever transport.
    func receive(_ packet: EngineIOPacket) {
        state.withLock { $0.heard = true }
        switch packet {
        case .pong, .noop, .upgrade:
            break
        case .ping:
            // Clients do not ping in v4; answered anyway.
            link.outbox.enqueue(ByteBuffer(string: "3"))
        case .close:
            end()
        case .message(let text):
            receiveMessage(text)
        }
    }

    private func receiveMessage(_ text: Substring) {
        let packet: SocketIOPacket
        do {
            packet = try SocketIOPacket(text)
        } catch {
            protocolError(error.reason)
            return
        }
        if state.withLock({ $0.attachments > 0 }) { return protocolError("a packet came where a binary attachment was expected") }
        guard packet.namespace == "/" else {
            // Only the main namespace exists.
            if packet.kind == .connect {
                link.outbox.enqueue(SocketIOFrames.connectError(namespace: packet.namespace, ParleyError(.notFound, "Invalid namespace")))
            }
            return
        }
        switch packet.kind {
        case .connect:
            connect(packet.payload as? [String: Any] ?? [:])
        case .disconnect:
            end()
        case .event:
            guard let (name, arguments) = packet.event else { return }
            let id = packet.id.map(RequestID.number)
            submit(ClientFrameDecoder().command(event: name, argument: arguments.first), id: id)
        case .binaryEvent:
            let name = packet.event?.name ?? ""
            expectAttachments(packet.attachments, answer: (
                packet.id.map(RequestID.number),
                .badRequest("binary data is not accepted: '\(name)' carries JSON only")
            ))
        case .binaryAck:
            expectAttachments(packet.attachments, answer: nil)
        case .ack, .connectError:
            // The server asks for no acks.
            break
        }
    }

    /// A binary message: an attachment of the last binary packet, else a protocol error.
    func receiveBinary() {
        enum Outcome { case unexpected, awaitingMore, answer((RequestID?, ParleyError)?) }
        let outcome = state.withLock { state -> Outcome in
            state.heard = true
            guard state.attachments > 0 else { return .unexpected }
            state.attachments -= 1
            return state.attachments == 0 ? .answer(state.binaryAnswer.take()) : .awaitingMore
        }
        switch outcome {
        case .unexpected: protocolError("unexpected binary data")
        case .answer(let answer?): submit(.failure(answer.1), id: answer.0)
        case .answer(nil), .awaitingMore: break
        }
    }

    private func expectAttachments(_ count: Int, answer: (RequestID?, ParleyError)?) {
        if count == 0 {
            if let answer { submit(.failure(answer.1), id: answer.0) }
            return
        }
        state.withLock { state in
            state.attachments = count
            state.binaryAnswer = answer
        }
    }

    private func submit(_ item: Result<Command, ParleyError>, id: RequestID?) {
        let early = state.withLock { state -> Bool? in
            guard state.namespace == .connecting else { return false }
            guard state.early.count < Connection.maxQueuedCommands else { return nil }
            state.early.append((item, id))
            return true
        }
        switch early {
        case true?: return
        case nil: return protocolError("too many events before CONNECT was answered")
        default: break
        }
        if case .success(.join(let room, let since)) = item, let since {
            state.withLock { $0.writer.pendingSince[room] = since }
        }
        let keepReading = switch item {
        case .success(let command): link.submit(command, id: id)
        case .failure(let error): link.submit(rejecting: error, id: id)
        }
        if !keepReading { state.withLock { $0.paused = true } }
    }

    /// The client's commands are being served faster than they come again.
    var isPaused: Bool { state.withLock { $0.paused } }

    private func resumeReading() {
        let (post, handler) = state.withLock { state -> (CheckedContinuation<Void, Never>?, (any SocketIOSocket)?) in
            state.paused = false
            if case .websocket(let handler) = state.transport { return (state.pausedPost.take(), handler) }
            return (state.pausedPost.take(), nil)
        }
        post?.resume()
        handler?.resumeReading()
    }

    /// A packet that breaks the protocol: the session ends, as socket.io's parser errors do.
    private func protocolError(_ reason: String) {
        server.logger.debug("socket.io protocol error", metadata: ["sid": "\(sid)", "reason": "\(reason)"])
        metrics.error(.badRequest)
        link.close(.policyViolation(reason))
    }

    // MARK: CONNECT and recovery

    /// The main namespace's `CONNECT`: authenticates from `auth` (`token`, or `user` in open
    /// mode), restores the rooms of a recovered session (`pid` and `offset`, which
    /// socket.io-client sends back on reconnect), then answers `CONNECT` with the socket id and
    /// the recovery id. A recovery succeeds when every room of the offset may be joined again;
    /// their missed messages are replayed from history, so it works after a restart or on
    /// another instance. The client is told whether it did (`socket.recovered`) by the `pid`.
    private func connect(_ auth: [String: Any]) {
        let first = state.withLock { state in
            guard state.namespace == .idle else { return false }
            state.namespace = .connecting
            return true
        }
        guard first else { return }
        let token = auth["token"] as? String
        let user = auth["user"] as? String
        let recovery = (auth["pid"] as? String).flatMap { pid in
            (auth["offset"] as? String).flatMap { SocketIOWriter.parseOffset($0, limits: settings.limits) }.map { (pid, $0) }
        }
        Task {
            do {
                try await link.perform(.connect(token: token, user: user))
            } catch {
                let error = (error as? ParleyError) ?? ParleyError(.internal, "internal error")
                metrics.error(error.code)
                link.outbox.enqueue(SocketIOFrames.connectError(namespace: "/", error))
                state.withLock { state in
                    state.namespace = .idle
                    state.early.removeAll()
                }
                return
            }
            let recovered = await recover(recovery)
            let (pid, early) = state.withLock { state in
                if let recovered { state.pid = recovered }
                state.namespace = .connected
                defer { state.early.removeAll() }
                return (state.pid, state.early)
            }
            link.outbox.enqueue(SocketIOFrames.connected(sid: link.sessionID ?? sid, pid: pid))
            for (item, id) in early { submit(item, id: id) }
        }
    }

    /// Joins the rooms of a recovery offset from their positions; returns the recovered `pid`,
    /// nil when there was nothing to recover or some room may not be joined again.
    private func recover(_ recovery: (pid: String, positions: [String: Int64])?) async -> String? {
        guard let (pid, positions) = recovery, link.mayRejoin(Array(positions.keys)) != false else { return nil }
        for (room, since) in positions.sorted(by: { $0.key < $1.key }) {
            state.withLock { $0.writer.pendingSince[room] = since }
            do {
                try await link.perform(.join(room: room, since: since))
            } catch {
                // The rooms joined so far stay joined and replayed; the client is told that
                // the session was not recovered and may join the others with `since`.
                server.logger.debug("socket.io recovery failed", metadata: ["room": "\(room)", "error": "\(error)"])
                return nil
            }
        }
        return pid
    }

    // MARK: Writing

    /// The outbox has packets, or is closing: wake whoever writes them.
    private func ready() {
        enum Action { case websocket(any SocketIOSocket), poll(CheckedContinuation<Void, Never>), none }
        let action = state.withLock { state -> Action in
            if case .websocket(let handler) = state.transport { return .websocket(handler) }
            if let poll = state.poll.take() { return .poll(poll) }
            state.readyWhileIdle = true
            return .none
        }
        switch action {
        case .websocket(let handler): handler.scheduleDrain()
        case .poll(let poll): poll.resume()
        case .none: break
        }
    }

    /// Takes what the outbox holds as packets, each with `headroom` free bytes in front (for a
    /// WebSocket frame header); returns the close reason once the session is over (its last
    /// packets included). Called by one writer at a time.
    func takePackets(into packets: inout [ByteBuffer], frames: inout [Outbox.Frame], headroom: Int = 0) -> CloseReason? {
        let reason = link.outbox.take(into: &frames)
        if !frames.isEmpty {
            metrics.recordDeliveries(frames)
            state.withLock { state in
                for frame in frames { state.writer.packets(frame.bytes, into: &packets, headroom: headroom) }
            }
            frames.removeAll(keepingCapacity: frames.capacity <= 64)
        }
        if let reason {
            let connected = state.withLock { $0.namespace == .connected }
            switch reason {
            case .policyViolation, .unauthenticated:
                // socket.io-client does not reconnect after the server's DISCONNECT.
                if connected { packets.append(SocketIOWriter.withHeadroom(SocketIOFrames.disconnect, headroom)) }
            case .slowConsumer, .goingAway, .serverError:
                // A transport close: the client reconnects and recovers.
                break
            }
            packets.append(SocketIOWriter.withHeadroom(SocketIOFrames.close, headroom))
            finishEnding(reason)
        }
        return reason
    }

    /// A polling `GET`: waits until there is something to send.
    func poll() async -> Poll {
        let start = state.withLock { state -> Poll? in
            if state.polling { return .overlapping }
            // While a WebSocket probes, a GET is still answered (with `noop` at once), as the
            // client may have sent it before it saw the probe's answer.
            guard !state.ended, case .polling = state.transport else { return .gone }
            state.polling = true
            return nil
        }
        if let start { return start }
        defer { state.withLock { $0.polling = false } }
        var frames: [Outbox.Frame] = []
        while true {
            var packets: [ByteBuffer] = []
            let reason = takePackets(into: &packets, frames: &frames)
            let upgrading = state.withLock { $0.probing != nil || $0.upgraded }
            if upgrading { packets.append(SocketIOFrames.noop) }
            if !packets.isEmpty || reason != nil { return .packets(packets, ended: reason != nil) }
            await withCheckedContinuation { continuation in
                let resumeNow = state.withLock { state in
                    if state.readyWhileIdle || state.probing != nil || state.ended {
                        state.readyWhileIdle = false
                        return true
                    }
                    state.poll = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        }
    }

    /// A polling `POST`'s body: its packets in order. False when another `POST` is running.
    /// While the client's commands wait to be served, the answer waits too: the client sends
    /// its next `POST` only after this one is answered.
    func post(_ packets: [EngineIOPacket.Payload]) async -> Bool {
        let first = state.withLock { state in
            defer { state.posting = true }
            return !state.posting
        }
        guard first else { return false }
        for packet in packets {
            switch packet {
            case .text(let packet): receive(packet)
            case .binary: receiveBinary()
            }
        }
        await withCheckedContinuation { continuation in
            let wait = state.withLock { state in
                guard state.paused, !state.ended else { return false }
                state.pausedPost = continuation
                return true
            }
            if !wait { continuation.resume() }
        }
        state.withLock { $0.posting = false }
        return true
    }

    // MARK: Upgrade

    /// A WebSocket sent `ping probe`: a pending `GET` is answered with `noop` so that polling
    /// pauses; the probe is answered on the WebSocket by its handler.
    func probe(from handler: any SocketIOSocket) {
        let poll = state.withLock { state in
            state.probing = handler
            state.heard = true
            return state.poll.take()
        }
        poll?.resume()
    }

    /// The WebSocket sent `upgrade`: from now on it carries the session.
    func upgrade(to handler: any SocketIOSocket) -> Bool {
        let done = state.withLock { state -> Bool in
            guard state.probing === handler, !state.ended else { return false }
            state.probing = nil
            state.transport = .websocket(handler)
            return true
        }
        if done { handler.scheduleDrain() }
        return done
    }

    /// The WebSocket carrying (or probing for) the session closed.
    func websocketClosed(_ handler: any SocketIOSocket) {
        let carried = state.withLock { state -> Bool in
            if state.probing === handler { state.probing = nil }
            if case .websocket(let current) = state.transport, current === handler { return true }
            return false
        }
        if carried { end() }
    }

    // MARK: Ending

    /// Ends the session now (the client left or went silent): nothing more is sent.
    func end() {
        link.outbox.close(.goingAway)
        finishEnding(nil)
        let (poll, post) = state.withLock { ($0.poll.take(), $0.pausedPost.take()) }
        poll?.resume()
        post?.resume()
    }

    /// Called once the last packets are taken (or nothing more can be sent): the session
    /// leaves its rooms and the registry; its slot is given back.
    private func finishEnding(_ reason: CloseReason?) {
        let (first, ping, pongDeadline) = state.withLock { state -> (Bool, ScheduledCall?, ScheduledCall?) in
            defer {
                state.ended = true
                // The WebSocket handler and the session hold each other until now.
                state.transport = .polling
                state.probing = nil
            }
            return (!state.ended, state.ping.take(), state.pongDeadline.take())
        }
        guard first else { return }
        ping?.cancel()
        pongDeadline?.cancel()
        if reason == .slowConsumer { metrics.slowConsumer() }
        server.remove(self)
        ticket.release()
        signalTarget.session.withLock { $0 = nil }
        Task { await link.finish() }
    }

    var isEnded: Bool { state.withLock { $0.ended } }

    /// A `GET` is waiting for something to send.
    var hasWaitingPoll: Bool { state.withLock { $0.poll != nil } }
}
