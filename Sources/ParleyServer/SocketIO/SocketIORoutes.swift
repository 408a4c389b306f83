import AsyncHTTPClient
import Hummingbird
import AsyncHTTPClient
import HTTPTypes
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import ParleyCore

/// `/socket.io/`: Engine.IO v4 long-polling (`GET` to receive, `POST` to send) and the
/// admission of its WebSocket transport, whose upgrade `ParleyHTTPChannel` performs. Errors of
/// the Engine.IO layer are answered as the reference server does: `400` with
/// `{"code": N, "message": ...}` (0 unknown transport, 1 unknown session id, 3 bad request,
/// 5 unsupported protocol version).
struct SocketIORoutes {
    let server: SocketIOServer
    let origins: OriginPolicy
    var host: SocketIOServer.Host { server.host }

    enum EngineIOError: Int, Error {
        case unknownTransport = 0
        case unknownSession = 1
        case badRequest = 3
        case unsupportedVersion = 5

        var message: String {
            switch self {
            case .unknownTransport: "Transport unknown"
            case .unknownSession: "Session ID unknown"
            case .badRequest: "Bad request"
            case .unsupportedVersion: "Unsupported protocol version"
            }
        }

        var response: Response {
            var json = JSONWriter(capacity: 64)
            json.object { json in
                json.key("code"); json.number(rawValue)
                json.key("message"); json.string(message)
            }
            return Response(status: .badRequest, headers: [.contentType: "application/json"], body: .init(byteBuffer: json.buffer))
        }
    }

    static let paths = ["/socket.io", "/socket.io/"]

    func register<Context: ChannelRequestContext>(on router: Router<Context>) {
        router.get("socket.io") { request, context in try await get(request, context) }
        router.post("socket.io") { request, context in try await post(request, context) }
    }

    /// The checks of a new Engine.IO session: not shutting down, an allowed origin, a slot.
    private func admit(origin: String?, host: String?, address: String?) throws(ParleyError) -> ConnectionLimiter.Ticket {
        guard !self.host.isDraining() else { throw ParleyError.unavailable("server is shutting down") }
        guard origins.allows(origin, host: host) else {
            throw ParleyError(.forbidden, "origin \(origin ?? "") is not allowed (PARLEY_ALLOWED_ORIGINS)")
        }
        return try self.host.connections.acquire(address: address)
    }

    /// The query of every Engine.IO request: `EIO=4` and the transport.
    private static func check(_ query: FlatDictionary<Substring, Substring>, transport: String) -> EngineIOError? {
        guard query["EIO"] == "4" else { return .unsupportedVersion }
        guard query["transport"].map(String.init) == transport else { return .unknownTransport }
        return nil
    }

    private func get(_ request: Request, _ context: some ChannelRequestContext) async throws -> Response {
        let query = request.uri.queryParameters
        if let error = Self.check(query, transport: "polling") { return error.response }
        let session: SocketIOSession
        if let sid = query["sid"] {
            guard let existing = server.session(String(sid)) else {
                return try await forward(request, sid: String(sid), body: nil) ?? EngineIOError.unknownSession.response
            }
            session = existing
        } else {
            let ticket = try admit(
                origin: request.headers[.origin], host: request.head.authority, address: context.channel.remoteAddress?.ipAddress
            )
            session = server.open(transport: .polling, ticket: ticket, eventLoop: context.channel.eventLoop)
        }
        switch await session.poll() {
        case .packets(let packets, _):
            var body = ByteBuffer()
            for (index, var packet) in packets.enumerated() {
                if index > 0 { body.writeInteger(UInt8(0x1E)) }
                body.writeBuffer(&packet)
            }
            return Response(status: .ok, headers: Self.textHeaders, body: .init(byteBuffer: body))
        case .overlapping:
            session.end()
            return EngineIOError.badRequest.response
        case .gone:
            return EngineIOError.unknownSession.response
        }
    }

    private func post(_ request: Request, _ context: some ChannelRequestContext) async throws -> Response {
        let query = request.uri.queryParameters
        if let error = Self.check(query, transport: "polling") { return error.response }
        guard let sid = query["sid"].map(String.init) else { return EngineIOError.badRequest.response }
        let session = server.session(sid)
        if session == nil, server.otherOwner(of: sid) == nil { return EngineIOError.unknownSession.response }
        let limit = server.settings.maxPayload
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > limit {
            session?.end()
            throw ParleyError(.tooLarge, "payload larger than \(limit) bytes (maxPayload)")
        }
        let body: ByteBuffer
        do {
            body = try await request.body.collect(upTo: limit)
        } catch {
            session?.end()
            throw ParleyError(.tooLarge, "payload larger than \(limit) bytes (maxPayload)")
        }
        guard let session else {
            return try await forward(request, sid: sid, body: body) ?? EngineIOError.unknownSession.response
        }
        guard let packets = EngineIOPacket.payload(String(buffer: body)) else {
            session.end()
            return EngineIOError.badRequest.response
        }
        guard await session.post(packets) else {
            session.end()
            return EngineIOError.badRequest.response
        }
        return Response(status: .ok, headers: Self.textHeaders, body: .init(byteBuffer: ByteBuffer(string: "ok")))
    }

    // MARK: Forwarding

    /// Marks a request one instance forwarded to another: it is never forwarded again.
    static let forwardedHeader = HTTPField.Name("X-Parley-Forwarded")!

    /// A polling request for a session another instance holds (a load balancer without sticky
    /// sessions sent it here): forwarded to that instance, its answer returned as it is. Nil
    /// when the session is unknown everywhere.
    private func forward(_ request: Request, sid: String, body: ByteBuffer?) async throws -> Response? {
        guard request.headers[Self.forwardedHeader] == nil, let owner = server.otherOwner(of: sid), let peers = server.peers,
            let base = await peers.url(of: owner)
        else { return nil }
        var outbound = HTTPClientRequest(url: base + request.uri.description)
        outbound.method = request.method == .post ? .POST : .GET
        outbound.headers.add(name: Self.forwardedHeader.rawName, value: host.instanceID)
        if let contentType = request.headers[.contentType] { outbound.headers.add(name: "Content-Type", value: contentType) }
        if let body { outbound.body = .bytes(body) }
        // A GET waits up to a ping interval for something to send.
        let timeout = server.settings.pingInterval + server.settings.pingTimeout + .seconds(5)
        do {
            host.metrics.forwarded()
            let answer = try await HTTPClient.shared.execute(outbound, timeout: .nanoseconds(Int64(timeout.nanoseconds)))
            let bytes = try await answer.body.collect(upTo: 2 * server.settings.limits.maxOutboxBytes + 1024)
            var headers = Self.textHeaders
            if let contentType = answer.headers.first(name: "Content-Type") { headers[.contentType] = contentType }
            return Response(status: .init(code: Int(answer.status.code)), headers: headers, body: .init(byteBuffer: bytes))
        } catch {
            server.logger.debug("socket.io forwarding failed", metadata: ["owner": "\(owner)", "error": "\(error)"])
            return nil
        }
    }

    private static let textHeaders: HTTPFields = [.contentType: "text/plain; charset=UTF-8", .cacheControl: "no-store"]

    // MARK: WebSocket

    /// Admits a WebSocket upgrade of `/socket.io/`: a session of its own, or the upgrade of the
    /// polling session its `sid` names.
    func admitUpgrade(_ head: HTTPRequestHead, channel: any Channel) throws -> SocketIOWebSocketHandler.Admission {
        let admission = try admitUpgrade(
            uri: head.uri, origin: head.headers.first(name: "origin"), host: head.headers.first(name: "host"),
            address: channel.remoteAddress?.ipAddress
        )
        if case .new(let ticket) = admission { channel.closeFuture.whenComplete { _ in ticket.release() } }
        return admission
    }

    /// The checks of a WebSocket upgrade of `uri`, wherever its request was read.
    func admitUpgrade(uri: String, origin: String?, host: String?, address: String?) throws -> SocketIOWebSocketHandler.Admission {
        let query = URI(uri).queryParameters
        if let error = Self.check(query, transport: "websocket") {
            throw ParleyError.badRequest(error.message)
        }
        if let sid = query["sid"] {
            guard let session = server.session(String(sid)), !session.isEnded else {
                throw ParleyError.badRequest(EngineIOError.unknownSession.message)
            }
            return .upgrade(session)
        }
        return .new(try admit(origin: origin, host: host, address: address))
    }
}
