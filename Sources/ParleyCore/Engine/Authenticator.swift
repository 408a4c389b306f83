/// Establishes who a connection or request acts as. Every transport asks the same one.
public protocol Authenticator: Sendable {
    /// True when anyone may claim any user id (development mode).
    var isOpen: Bool { get }
    /// `token` is a bearer credential (JWT or API key) when the client gave one; `user` is
    /// the user id the client claims, honoured only in open mode.
    func authenticate(token: String?, user: String?) async throws(ParleyError) -> Identity
}

/// Open mode: no secret configured, so the claimed user id is taken as is.
public struct OpenAuthenticator: Authenticator {
    let limits: Limits

    public init(limits: Limits) {
        self.limits = limits
    }

    public var isOpen: Bool { true }

    public func authenticate(token: String?, user: String?) async throws(ParleyError) -> Identity {
        guard let user else { throw ParleyError(.unauthorized, "a user id is required (open mode: give 'user')") }
        return Identity(user: try Validation.user(user, limits: limits))
    }
}
