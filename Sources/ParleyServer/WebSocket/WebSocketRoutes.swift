import Synchronization
import Hummingbird
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
        let query = request.uri.queryParameters
        let token = query["token"].map(String.init)
        let user = query["user"].map(String.init)
        guard token != nil || user != nil else { return nil }
        return try RequestAuth.refuseBackend(try await authenticator.authenticate(token: token, user: user))
    }

    private static let counter = Atomic<Int>(0)
    private static func nextConnectionID() -> Int { counter.wrappingAdd(1, ordering: .relaxed).newValue }
}
