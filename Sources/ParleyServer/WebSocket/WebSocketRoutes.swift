import Synchronization
import Hummingbird
import HummingbirdCore
import HummingbirdWebSocket
import Logging
import ParleyCore

/// `GET /ws`: checks the `Origin`, authenticates from the query (`?token=` or, in open mode,
/// `?user=`), counts the connection against the limits and hands the socket to a
/// `WebSocketConnection`. Every refusal happens before the upgrade. A plain GET without an
/// upgrade runs the same checks and answers the refusal's status and error JSON, else 426.
struct WebSocketRoutes {
    let engine: Engine
    let authenticator: any Authenticator
    let settings: WebSocketConnection.Settings
    let origins: OriginPolicy
    let logger: Logger

    func register(on router: Router<ParleyRequestContext>) {
        router.ws("ws") { request, context in
            // Every check runs for a plain GET as well: the WebSocket library answers a refused
            // upgrade with a bare 400, so `GET /ws?...` without an upgrade is how a client or an
            // operator reads the actual status and error JSON.
            guard !engine.isDraining else { throw ParleyError.unavailable("server is shutting down") }
            try origins.check(request)
            _ = try await identity(request)
            // Counted from here until the TCP connection closes, whatever happens to the upgrade.
            let ticket = try engine.connections.acquire(address: context.channel.remoteAddress?.ipAddress)
            guard request.headers[.upgrade]?.lowercased() == "websocket" else {
                ticket.release()
                throw HTTPError(.upgradeRequired, headers: [.upgrade: "websocket"], message: "GET /ws must be a WebSocket upgrade")
            }
            context.channel.closeFuture.whenComplete { _ in ticket.release() }
            return .upgrade([:])
        } onUpgrade: { inbound, outbound, context in
            let identity = try? await identity(context.request)
            var logger = logger
            logger[metadataKey: "conn"] = "\(Self.nextConnectionID())"
            let connection = WebSocketConnection(engine: engine, authenticator: authenticator, settings: settings, logger: logger)
            await connection.run(identity: identity, inbound: inbound, outbound: outbound)
        }
    }

    /// The identity the upgrade request carries, nil when it carries none (the client must
    /// then send `connect`). Invalid credentials refuse the upgrade (400, 401 or 403).
    private func identity(_ request: Request) async throws -> Identity? {
        try await identity(query: request.uri.queryParameters)
    }

    private func identity(query: FlatDictionary<Substring, Substring>) async throws -> Identity? {
        let token = query["token"].map(String.init)
        let user = query["user"].map(String.init)
        guard token != nil || user != nil else { return nil }
        return try RequestAuth.refuseBackend(try await authenticator.authenticate(token: token, user: user))
    }

    /// The refusal an upgrade request to `/ws` gets, run before the WebSocket upgrader sees it
    /// so that the client reads the status and the error JSON (`RequestHeadDeadline`); the
    /// route runs the same checks again when it takes the connection's slot.
    func vet(_ request: RequestHeadDeadline.UpgradeRequest) async -> ParleyError? {
        let uri = URI(request.target)
        guard uri.path == "/ws" else { return nil }
        do {
            guard !engine.isDraining else { throw ParleyError.unavailable("server is shutting down") }
            let origin = request.headers.first { $0.name == "origin" }?.value
            let host = request.headers.first { $0.name == "host" }?.value
            guard origins.allows(origin, host: host) else {
                throw ParleyError(.forbidden, "origin \(origin ?? "") is not allowed (PARLEY_ALLOWED_ORIGINS)")
            }
            _ = try await identity(query: uri.queryParameters)
            try engine.connections.check(address: request.remoteAddress)
            return nil
        } catch let error as ParleyError {
            return error
        } catch {
            return ParleyError.badRequest("invalid upgrade request")
        }
    }

    private static let counter = Atomic<Int>(0)
    private static func nextConnectionID() -> Int { counter.wrappingAdd(1, ordering: .relaxed).newValue }
}
