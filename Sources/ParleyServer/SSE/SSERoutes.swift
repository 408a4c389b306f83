import Foundation
import Hummingbird
import Logging
import NIOCore
import ParleyCore

/// `GET /rooms/{room}/events`: a room as Server-Sent Events. The stream is a session like a
/// WebSocket's (it joins the room, so its user is present), fed by the same hub; without a
/// user (open mode) or with an API key it is a watcher that is not present. `Last-Event-ID`
/// or `?since=` resumes exactly as `join` with `since`; a comment line every `heartbeat` keeps
/// proxies from closing an idle stream.
struct SSERoutes {
    let engine: Engine
    let auth: RequestAuth
    let heartbeat: Duration
    /// Token expiry follows this clock; nil: the channel's event loop.
    let clock: (any ParleyClock)?
    let logger: Logger

    func register(on router: Router<ParleyRequestContext>) {
        router.get("rooms/:room/events") { request, context -> Response in
            let room = try Validation.room(try context.parameters.require("room"), limits: engine.limits)
            let identity = try await streamIdentity(request)
            guard identity.mayAccess(room) else { throw ParleyError(.forbidden, "not allowed in room \(room)") }
            let since = try resumePoint(request)
            guard !engine.isDraining else { throw ParleyError.unavailable("server is shutting down") }
            // The slot is held until the TCP connection closes, which also covers a client that
            // resets before the response head is written (the body below then never runs).
            let ticket = try engine.connections.acquire(address: context.channel.remoteAddress?.ipAddress)
            let channel = context.channel
            channel.closeFuture.whenComplete { _ in ticket.release() }
            return Response(
                status: .ok,
                headers: [.contentType: "text/event-stream", .cacheControl: "no-cache", .init("X-Accel-Buffering")!: "no"],
                body: ResponseBody { writer in
                    // The session exists only while the body is written: nothing can leak it.
                    let connection = Connection(
                        engine: engine, authenticator: auth.authenticator, format: SSEFrames.shared,
                        settings: .init(transport: "sse", handshakeTimeout: .zero, backendsMayConnect: true, acceptsCommands: false),
                        clock: clock ?? EventLoopClock(eventLoop: channel.eventLoop), logger: logger
                    )
                    do {
                        try connection.start(identity: identity, watcher: identity.isBackend, notifications: false)
                    } catch {
                        try await writer.write(SSEFrames.error((error as? ParleyError) ?? .unavailable("server is shutting down")))
                        try await writer.finish(nil)
                        return
                    }
                    // The client going away ends the stream now, not at the next heartbeat.
                    channel.closeFuture.whenComplete { _ in connection.close(.goingAway) }
                    await stream(connection, room: room, since: since, to: &writer)
                    ticket.release()
                    try await writer.finish(nil)
                }
            )
        }
    }

    /// Who follows the room. A user (a token, or `?user=` in open mode) is a session with
    /// presence, like a WebSocket. Without a user (open mode) or with an API key, the stream
    /// is an anonymous watcher: it receives the room's events and is in no one's presence.
    private func streamIdentity(_ request: Request) async throws -> Identity {
        let claimed = request.uri.queryParameters["user"].map(String.init)
        if claimed == nil { return try await auth.reader(request) }
        return try await auth.identity(request, claimedUser: claimed)
    }

    private func resumePoint(_ request: Request) throws -> Int64? {
        try QueryValues.resumePoint(request.headers[.init("Last-Event-ID")!] ?? request.uri.queryParameters["since"].map(String.init))
    }

    private func stream(_ connection: Connection, room: String, since: Int64?, to writer: inout any ResponseBodyWriter) async {
        let outbox = connection.outbox
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                do {
                    try await connection.perform(.join(room: room, since: since), id: nil)
                } catch {
                    logger.warning("sse join failed", metadata: ["room": "\(room)", "error": "\(error)"])
                    connection.close(.serverError("join failed"))
                }
            }
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: heartbeat)
                    outbox.enqueue(SSEFrames.heartbeat)
                }
            }
            loop: while true {
                switch await outbox.next() {
                case .frames(let frames):
                    do {
                        try await writer.write(contentsOf: frames.map(\.bytes))
                        engine.metrics.recordDeliveries(frames)
                    } catch {
                        break loop
                    }
                case .closed(let reason):
                    if reason == .slowConsumer { engine.metrics.slowConsumer() }
                    break loop
                }
            }
            group.cancelAll()
        }
        await connection.finish()
    }
}
