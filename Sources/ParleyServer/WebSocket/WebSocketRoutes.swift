import Hummingbird
import HummingbirdCore
import NIOHTTP1
import Logging
import NIOCore
import ParleyCore

/// `GET /ws`: checks the `Origin`, authenticates from the query (`?token=` or, in open mode,
/// `?user=`), counts the connection against the limits and hands the socket to a
/// `WebSocketHandler`. Every refusal happens before the upgrade and is answered with its status
/// and error JSON (`ParleyHTTPChannel`). A plain GET without an
/// upgrade runs the same checks and answers the refusal, else 426.
///
/// The upgrade is decided by `WebSocketUpgrader` in `ParleyHTTPChannel`, on SwiftNIO's own
/// upgrade machinery, not by a router route.
struct WebSocketRoutes {
    /// Shared by every WebSocket of the server. The server's logger as is: metadata per
    /// connection would cost every idle socket a dictionary.
    let shared: WebSocketHandler.Shared
    let origins: OriginPolicy
    var engine: Engine { shared.engine }
    var authenticator: any Authenticator { shared.authenticator }
    var settings: WebSocketHandler.Settings { shared.settings }

    init(engine: Engine, authenticator: any Authenticator, settings: WebSocketHandler.Settings, origins: OriginPolicy, logger: Logger) {
        self.shared = WebSocketHandler.Shared(engine: engine, authenticator: authenticator, settings: settings, logger: logger)
        self.origins = origins
    }

    func register(on router: Router<ParleyRequestContext>) {
        router.get("ws") { request, context -> Response in
            _ = try await admit(
                query: request.uri.queryParameters, origin: request.headers[.origin], host: request.head.authority,
                address: context.channel.remoteAddress?.ipAddress
            )
            throw HTTPError(.upgradeRequired, headers: [.upgrade: "websocket"], message: "GET /ws must be a WebSocket upgrade")
        }
    }

    /// Admits an upgrade request to `/ws` (its path is checked by the upgrader) and takes its
    /// connection slot, given back when the TCP connection closes. Returns the identity the
    /// request authenticated, nil when the client must send `connect`.
    func admitUpgrade(_ head: HTTPRequestHead, channel: any Channel) async throws -> Identity? {
        let uri = URI(head.uri)
        let identity = try await admit(
            query: uri.queryParameters, origin: head.headers.first(name: "origin"), host: head.headers.first(name: "host"),
            address: channel.remoteAddress?.ipAddress
        )
        let ticket = try engine.connections.acquire(address: channel.remoteAddress?.ipAddress)
        channel.closeFuture.whenComplete { _ in ticket.release() }
        return identity
    }

    /// The handler that serves an upgraded connection.
    func makeHandler(identity: Identity?) -> WebSocketHandler {
        WebSocketHandler(shared: shared, identity: identity)
    }

    /// The checks of every way into `/ws` (the upgrade, a plain GET): not
    /// shutting down, an allowed `Origin`, valid credentials if any, a free connection slot.
    /// Returns the identity the request carries, nil when it carries none (the client must
    /// then send `connect`).
    private func admit(query: FlatDictionary<Substring, Substring>, origin: String?, host: String?, address: String?) async throws -> Identity? {
        guard !engine.isDraining else { throw ParleyError.unavailable("server is shutting down") }
        guard origins.allows(origin, host: host) else {
            throw ParleyError(.forbidden, "origin \(origin ?? "") is not allowed (PARLEY_ALLOWED_ORIGINS)")
        }
        let token = query["token"].map(String.init)
        let user = query["user"].map(String.init)
        let identity: Identity? =
            if token != nil || user != nil {
                try RequestAuth.refuseBackend(try await authenticator.authenticate(token: token, user: user))
            } else {
                nil
            }
        try engine.connections.check(address: address)
        return identity
    }
}
