import Synchronization
import Hummingbird
import HummingbirdWebSocket
import Logging
import ParleyCore

/// `GET /ws`: authenticates from the query (`?token=` or, in open mode, `?user=`) and hands the
/// socket to a `WebSocketConnection`. A plain GET without an upgrade answers 426.
struct WebSocketRoutes {
    let engine: Engine
    let authenticator: any Authenticator
    let settings: WebSocketConnection.Settings
    let logger: Logger

    func register(on router: Router<ParleyRequestContext>) {
        router.ws("ws") { request, _ in
            guard request.headers[.upgrade]?.lowercased() == "websocket" else {
                throw HTTPError(.upgradeRequired, headers: [.upgrade: "websocket"], message: "GET /ws must be a WebSocket upgrade")
            }
            guard !engine.isDraining else { throw ParleyError.unavailable("server is shutting down") }
            _ = try await identity(request)
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
    /// then send `connect`). Invalid credentials refuse the upgrade (400 or 401).
    private func identity(_ request: Request) async throws -> Identity? {
        let query = request.uri.queryParameters
        let token = query["token"].map(String.init)
        let user = query["user"].map(String.init)
        guard token != nil || user != nil else { return nil }
        return try await authenticator.authenticate(token: token, user: user)
    }

    private static let counter = Atomic<Int>(0)
    private static func nextConnectionID() -> Int { counter.wrappingAdd(1, ordering: .relaxed).newValue }
}
