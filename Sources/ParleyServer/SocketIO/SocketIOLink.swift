import Hummingbird
import NIOCore
import ParleyCore

/// Where a Socket.IO session's namespace commands go: this process's engine (a `Connection`),
/// or, in `parley gateway`, an upstream instance over one gRPC `Chat` stream. Either way the
/// session reads what to send from `outbox`, filled with `SocketIOFrames` frames, so Engine.IO,
/// the recovery offsets and the transports are the same code in both places.
protocol SocketIOLink: AnyObject, Sendable {
    var outbox: Outbox { get }
    /// The Parley session's id once `connect` succeeded (the Socket.IO socket id).
    var sessionID: String? { get }
    /// Starts the link (the handshake deadline runs from here).
    func begin()
    /// Queues a command; false when the transport should stop reading until told to resume.
    func submit(_ command: Command, id: ParleyCore.RequestID?) -> Bool
    /// A packet the session could not decode, answered in its turn.
    func submit(rejecting error: ParleyError, id: ParleyCore.RequestID?) -> Bool
    /// Performs a command whose answer the session needs (`connect`, the joins of a recovery):
    /// its reply is queued without an ack id (so a join's marker reaches the writer); its error
    /// is thrown.
    func perform(_ command: Command) async throws
    /// Whether every room of a recovery offset may be joined again (nil: not known here; the
    /// joins themselves will say).
    func mayRejoin(_ rooms: [String]) -> Bool?
    func close(_ reason: CloseReason)
    /// The session ended: deadlines cancelled, rooms left.
    func finish() async
}

extension Connection: SocketIOLink {
    var sessionID: String? { session?.id }

    func begin() {
        try? start(identity: nil)
    }

    func perform(_ command: Command) async throws {
        try await perform(command, id: nil)
    }

    func mayRejoin(_ rooms: [String]) -> Bool? {
        guard let identity = session?.identity else { return false }
        return rooms.allSatisfy(identity.mayAccess)
    }
}

/// A WebSocket carrying a Socket.IO session: told when the outbox has packets, and when the
/// client's commands are served again after it was paused.
protocol SocketIOSocket: AnyObject, Sendable {
    func scheduleDrain()
    func resumeReading()
}

/// What the Socket.IO layer counts.
protocol SocketIOMetrics: Sendable {
    func error(_ code: ParleyError.Code)
    func recordDeliveries(_ frames: [Outbox.Frame])
    func slowConsumer()
    /// A polling request forwarded to the instance that holds its session.
    func forwarded()
}

extension ParleyMetrics: SocketIOMetrics {
    func forwarded() {
        socketIOForwarded.increment()
    }
}

/// A request context that knows its channel (the client's address, the event loop a new
/// session's deadlines run on).
protocol ChannelRequestContext: RequestContext {
    var channel: any Channel { get }
}

extension ParleyRequestContext: ChannelRequestContext {}
