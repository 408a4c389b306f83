import Foundation
import Hummingbird
import ParleyCore

/// Who an HTTP or SSE request acts as: `Authorization: Bearer <token>` (or `?token=`), else, in
/// open mode, the user it claims.
struct RequestAuth: Sendable {
    let authenticator: any Authenticator

    func bearerToken(_ request: Request) -> String? {
        if let token = BearerToken.parse(request.headers[.authorization]) { return token }
        return request.uri.queryParameters["token"].map(String.init)
    }

    /// The identity of a call that names its user (`user` in a POST body or `?user=`).
    func identity(_ request: Request, claimedUser: String?) async throws -> Identity {
        try await authenticator.authenticate(token: bearerToken(request), user: claimedUser)
    }

    /// The identity of a read-only call: in open mode anyone may read.
    func reader(_ request: Request) async throws -> Identity {
        let token = bearerToken(request)
        if token == nil, authenticator.isOpen { return Identity(user: "reader", isBackend: true) }
        return try await authenticator.authenticate(token: token, user: nil)
    }

    /// A WebSocket is a user's session: an API key does not make a backend a user.
    static func refuseBackend(_ identity: Identity) throws(ParleyError) -> Identity {
        guard !identity.isBackend else {
            throw ParleyError(.forbidden, "API keys are for backend HTTP calls; streams and WebSockets need a user token")
        }
        return identity
    }
}
