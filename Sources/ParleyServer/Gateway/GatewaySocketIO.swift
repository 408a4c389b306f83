import GRPCCore
import Hummingbird
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOWebSocket
import ParleyCore
import ParleyGRPC
import Synchronization

// Socket.IO through `parley gateway`: the same Engine.IO sessions as `parley serve` runs
// (`SocketIOSession`: polling, WebSocket, the upgrade, heartbeats, recovery offsets), whose
// namespace commands go to an upstream instance over one gRPC `Chat` stream per session
// instead of to an engine in the process.

/// One Socket.IO session's link to an upstream: its commands go out on a `Chat` stream (each
/// with a request id of the link's own, so that every reply comes back, a join's too), and
/// what the upstream sends is encoded as `SocketIOFrames` into the session's outbox.
final class UpstreamLink: SocketIOLink {
    let outbox: Outbox
    private let bridge: GatewayBridge
    private let resumeReading: @Sendable () -> Void
    private let commands: AsyncStream<Chat_V1_ChatCommand>
    private let feed: AsyncStream<Chat_V1_ChatCommand>.Continuation

    /// A command sent and not yet answered.
    private struct Sent {
        /// The client's ack id, if it asked for one.
        var id: ParleyCore.RequestID?
        var at: ContinuousClock.Instant
        /// Someone waits for the answer (`perform`) instead of the client.
        var waiter: CheckedContinuation<Void, any Error>?
    }

    private struct State {
        var next = 0
        var sent: [String: Sent] = [:]
        var sessionID: String?
        var badCommands = 0
        var paused = false
        var task: Task<Void, Never>?
        var finished = false
    }

    private let state = Mutex(State())

    init(bridge: GatewayBridge, outbox: Outbox, resumeReading: @escaping @Sendable () -> Void) {
        self.bridge = bridge
        self.outbox = outbox
        self.resumeReading = resumeReading
        (commands, feed) = AsyncStream.makeStream()
        bridge.metrics.socketIOSessions.increment()
    }

    var sessionID: String? { state.withLock { $0.sessionID } }

    func begin() {
        let task = Task { await self.run() }
        let cancel = state.withLock { state in
            state.task = task
            return state.finished
        }
        if cancel { task.cancel() }
    }

    private func run() async {
        guard let member = await bridge.upstreams.pick(wait: bridge.configuration.upstreamWait) else {
            end(.goingAway, "no upstream available")
            return
        }
        let end = await bridge.stream(member, metadata: Metadata(), commands: commands) { frame in self.receive(frame) }
        switch end {
        case .clientGone: self.end(.goingAway, "the session ended")
        case .ended: self.end(.goingAway, "the upstream ended the stream")
        case .unreachable: self.end(.goingAway, "could not reach the upstream")
        case .failed(let error):
            switch GatewayBridge.failure(of: error, upstream: member.upstream, pool: bridge.upstreams) {
            case .slowConsumer: self.end(.slowConsumer, "slow consumer")
            case .refused(let why): self.end(error.code == .unauthenticated ? .unauthenticated(why) : .policyViolation(why), why)
            // A transport close: socket.io-client reconnects (through any gateway) and recovers.
            case .shuttingDown, .upstreamDown: self.end(.goingAway, "upstream unavailable")
            case .other(let why): self.end(.serverError(why), why)
            }
        }
    }

    /// The stream is over: commands still waiting fail, the session closes.
    private func end(_ reason: CloseReason, _ why: String) {
        let waiting = state.withLock { state in
            defer { state.sent.removeAll() }
            return state.sent.values.compactMap(\.waiter)
        }
        for waiter in waiting { waiter.resume(throwing: ParleyError.unavailable(why)) }
        outbox.close(reason)
    }

    private func receive(_ frame: UpstreamFrame) {
        switch frame {
        case .event(let event):
            outbox.enqueue(SocketIOFrames.shared.encode(event))
        case .reply(let reply, let key):
            let sent = answered(key)
            if case .connected(_, let session) = reply { state.withLock { $0.sessionID = session } }
            if let frame = SocketIOFrames.shared.encode(reply, id: sent?.id) { outbox.enqueue(frame) }
            sent?.waiter?.resume()
        case .error(let error, let key):
            let sent = answered(key)
            if let waiter = sent?.waiter {
                waiter.resume(throwing: error)
            } else {
                outbox.enqueue(SocketIOFrames.shared.encode(error, id: sent?.id))
            }
        }
    }

    /// Takes the command `key` answered; resumes reading once few enough wait.
    private func answered(_ key: String) -> Sent? {
        let (sent, resume) = state.withLock { state -> (Sent?, Bool) in
            let sent = state.sent.removeValue(forKey: key)
            guard state.paused, state.sent.count <= Connection.maxQueuedCommands / 2 else { return (sent, false) }
            state.paused = false
            return (sent, true)
        }
        if let sent { bridge.metrics.replySeconds.record(ContinuousClock.now - sent.at) }
        if resume { resumeReading() }
        return sent
    }

    /// Sends a command under a new request id; nil once the link is finished.
    private func send(_ command: Command, id: ParleyCore.RequestID?, waiter: CheckedContinuation<Void, any Error>?) -> Bool? {
        let key = state.withLock { state -> String? in
            guard !state.finished else { return nil }
            state.next += 1
            let key = String(state.next)
            state.sent[key] = Sent(id: id, at: .now, waiter: waiter)
            // As `Connection` does: a client with this many commands unanswered stops being read.
            if state.sent.count >= Connection.maxQueuedCommands { state.paused = true }
            return key
        }
        guard let key else { return nil }
        feed.yield(Chat_V1_ChatCommand(command, requestID: key))
        return state.withLock { !$0.paused }
    }

    func submit(_ command: Command, id: ParleyCore.RequestID?) -> Bool {
        state.withLock { $0.badCommands = 0 }
        return send(command, id: id, waiter: nil) ?? true
    }

    /// A packet that did not decode to a command: answered here, as the upstream would answer
    /// it (ahead of the answers still due for earlier commands), and counted as bad.
    func submit(rejecting error: ParleyError, id: ParleyCore.RequestID?) -> Bool {
        outbox.enqueue(SocketIOFrames.shared.encode(error, id: id))
        let (bad, keepReading) = state.withLock { state in
            if error.code == .badRequest { state.badCommands += 1 }
            return (state.badCommands, !state.paused)
        }
        if bad >= bridge.configuration.maxConsecutiveBadFrames { outbox.close(.policyViolation("too many bad commands in a row")) }
        return keepReading
    }

    func perform(_ command: Command) async throws {
        try await withCheckedThrowingContinuation { (waiter: CheckedContinuation<Void, any Error>) in
            if send(command, id: nil, waiter: waiter) == nil { waiter.resume(throwing: ParleyError.unavailable("the session ended")) }
        }
    }

    /// The upstream checks each join of a recovery itself.
    func mayRejoin(_ rooms: [String]) -> Bool? { nil }

    func close(_ reason: CloseReason) {
        outbox.close(reason)
    }

    /// Ends the upstream stream (the upstream's session leaves its rooms).
    func finish() async {
        let (task, first) = state.withLock { state in
            defer { state.finished = true }
            return (state.task, !state.finished)
        }
        guard first else { return }
        bridge.metrics.socketIOSessions.decrement()
        feed.finish()
        task?.cancel()
        end(.goingAway, "the session ended")
    }
}

/// A Socket.IO WebSocket at the gateway, on Hummingbird's WebSocket streams: a reader loop that
/// hands packets to the session (pausing while the session has too many commands waiting) and
/// a writer loop woken by the session's outbox.
final class GatewaySocketIOSocket: SocketIOSocket {
    private let wakes: AsyncStream<Void>
    private let wake: AsyncStream<Void>.Continuation
    /// Carries its session (from the start, or since `upgrade`), rather than probing.
    let upgraded = Atomic<Bool>(false)
    private let paused = Mutex<CheckedContinuation<Void, Never>?>(nil)

    init() {
        (wakes, wake) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    func scheduleDrain() {
        wake.yield()
    }

    func resumeReading() {
        paused.withLock { $0.take() }?.resume()
    }

    /// Serves one WebSocket of `/socket.io/`, admitted as `admission`.
    static func serve(
        _ admission: SocketIOWebSocketHandler.Admission, server: SocketIOServer, eventLoop: any EventLoop, metrics: GatewayMetrics,
        inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter
    ) async {
        let socket = GatewaySocketIOSocket()
        let session: SocketIOSession
        switch admission {
        case .new(let ticket):
            socket.upgraded.store(true, ordering: .relaxed)
            session = server.open(transport: .websocket(socket), ticket: ticket, eventLoop: eventLoop)
        case .upgrade(let existing):
            session = existing
        }
        metrics.connections.increment()
        defer { metrics.connections.decrement() }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await socket.write(session, outbound: outbound, metrics: metrics) }
            await socket.read(session, inbound: inbound, outbound: outbound, server: server, metrics: metrics)
            session.websocketClosed(socket)
            socket.wake.finish()
        }
    }

    private func read(
        _ session: SocketIOSession, inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter, server: SocketIOServer,
        metrics: GatewayMetrics
    ) async {
        do {
            for try await message in inbound.messages(maxSize: server.settings.maxPayload) {
                metrics.framesIn.increment()
                switch message {
                case .binary:
                    if upgraded.load(ordering: .relaxed) { session.receiveBinary() }
                case .text(let text):
                    guard let packet = EngineIOPacket(Substring(text)) else {
                        session.link.close(.policyViolation("not an Engine.IO packet"))
                        continue
                    }
                    if upgraded.load(ordering: .relaxed) {
                        session.receive(packet)
                        await waitWhilePaused(session)
                        continue
                    }
                    // Probing for a polling session.
                    switch packet {
                    case .ping("probe"):
                        session.probe(from: self)
                        try await outbound.write(.text(String(buffer: SocketIOFrames.pongProbe)))
                        metrics.framesOut.increment()
                    case .upgrade:
                        // Set first: the upgrade wakes the writer, which writes only for an upgraded socket.
                        upgraded.store(true, ordering: .relaxed)
                        if !session.upgrade(to: self) {
                            upgraded.store(false, ordering: .relaxed)
                            try? await outbound.close(.policyViolation, reason: "no session to upgrade")
                            return
                        }
                    default:
                        break
                    }
                }
            }
        } catch {
            try? await outbound.close(.messageTooLarge, reason: "message larger than \(server.settings.maxPayload) bytes")
        }
    }

    /// The client sends faster than its commands are served: stop reading from it (TCP pushes
    /// back) until they are.
    private func waitWhilePaused(_ session: SocketIOSession) async {
        await withCheckedContinuation { continuation in
            let wait = paused.withLock { paused in
                guard session.isPaused, !session.isEnded else { return false }
                paused = continuation
                return true
            }
            if !wait { continuation.resume() }
        }
    }

    /// Writes what the session's outbox holds each time it has something, each packet a
    /// WebSocket message; then the close its session ended with.
    private func write(_ session: SocketIOSession, outbound: WebSocketOutboundWriter, metrics: GatewayMetrics) async {
        // Once nothing more is written, a reader paused for the session's commands must not
        // wait for them: it reads on until the client's close (or the socket's end).
        defer { resumeReading() }
        var packets: [ByteBuffer] = []
        var frames: [Outbox.Frame] = []
        for await _ in wakes {
            guard upgraded.load(ordering: .relaxed) else { continue }
            let reason = session.takePackets(into: &packets, frames: &frames)
            do {
                for packet in packets {
                    try await outbound.write(.custom(WebSocketFrame(fin: true, opcode: .text, data: packet)))
                }
            } catch {
                return
            }
            metrics.framesOut.increment(by: Int64(packets.count))
            packets.removeAll(keepingCapacity: packets.capacity <= 64)
            if let reason {
                let (code, text) = WebSocketHandler.closeCode(reason)
                try? await outbound.close(.init(codeNumber: Int(code)), reason: text)
                return
            }
        }
    }
}

/// The gateway's request context: Hummingbird's WebSocket context, with the channel (the
/// client's address, an event loop for a session's deadlines) and what the admission of an
/// upgrade found.
struct GatewayRequestContext: RequestContext, WebSocketRequestContext, ChannelRequestContext {
    var coreContext: CoreRequestContextStorage
    let webSocket: WebSocketHandlerReference<Self>
    let channel: any Channel
    /// What the admission of an upgrade found, for its handler.
    let admitted = Admitted()

    final class Admitted: Sendable {
        /// The slot of a `/ws` connection.
        let ticket = Mutex<ConnectionLimiter.Ticket?>(nil)
        let socketIO = Mutex<SocketIOWebSocketHandler.Admission?>(nil)
        /// A connection limit refused it: the WebSocket is closed with 1013 and why at once
        /// (Hummingbird answers a refused upgrade with a bare 400, which says nothing).
        let refusal = Mutex<ParleyError?>(nil)

        /// Closes `outbound` if the upgrade was refused; true then.
        func refused(_ outbound: WebSocketOutboundWriter) async -> Bool {
            guard let refusal = refusal.withLock({ $0.take() }) else { return false }
            try? await outbound.close(.unknown(1013), reason: String(refusal.message.prefix(120)))
            return true
        }
    }

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        webSocket = .init()
        channel = source.channel
    }
}

extension GatewayMetrics: SocketIOMetrics {
    /// Errors are counted by the upstream that answered them.
    func error(_ code: ParleyError.Code) {}
    func recordDeliveries(_ frames: [Outbox.Frame]) {}
    func slowConsumer() {
        slowConsumers.increment()
    }
    /// Gateways do not forward polling requests to each other.
    func forwarded() {}
}
