import ParleyCore

/// The server's authenticator: API keys for backends, JWTs for users, and open mode when no
/// JWT key is configured. Every transport (WebSocket, SSE, HTTP, gRPC) asks this one.
///
/// - A bearer credential equal to an API key is a backend (`isBackend`): it may post as any
///   user (naming them) and read any room.
/// - Otherwise, with JWT configured, it must be a valid token; its `sub` is the user, and a
///   different claimed `user` is `forbidden`.
/// - Without JWT configured (open mode) the claimed user is taken as is; a bearer credential
///   that is not an API key is then refused when API keys are configured and ignored
///   otherwise.
public struct TokenAuthenticator: Authenticator {
    let verifier: TokenVerifier?
    let apiKeys: APIKeys
    let limits: Limits
    /// Tells whether a token has expired; tests move a `ManualClock` instead of waiting.
    let clock: any ParleyClock

    public init(verifier: TokenVerifier?, apiKeys: APIKeys, limits: Limits, clock: any ParleyClock = SystemClock()) {
        self.verifier = verifier
        self.apiKeys = apiKeys
        self.limits = limits
        self.clock = clock
    }

    /// Loads the configured keys; fails with a message naming the setting to fix.
    public static func load(
        _ configuration: AuthConfiguration, limits: Limits, clock: any ParleyClock = SystemClock()
    ) async throws(AuthConfigurationError) -> TokenAuthenticator {
        TokenAuthenticator(
            verifier: try await TokenVerifier.load(configuration, limits: limits),
            apiKeys: APIKeys(configuration.apiKeys), limits: limits, clock: clock
        )
    }

    public var isOpen: Bool { verifier == nil }

    /// The JWT algorithms accepted (empty in open mode).
    public var algorithms: [String] { verifier?.algorithms ?? [] }

    /// The name a backend identity carries; a backend post must name its author with `user`.
    public static let backendUser = "backend"

    public func authenticate(token: String?, user: String?) async throws(ParleyError) -> Identity {
        if let token, !token.isEmpty {
            if apiKeys.matches(token) { return Identity(user: Self.backendUser, isBackend: true) }
            if let verifier {
                let identity = try await verifier.verify(token, now: clock.now)
                if let user, user != identity.user {
                    throw ParleyError(.forbidden, "the token is for \(identity.user), not \(user)")
                }
                return identity
            }
            if !apiKeys.isEmpty { throw ParleyError(.unauthorized, "invalid API key") }
        } else if verifier != nil {
            throw ParleyError(.unauthorized, "a token is required (Authorization: Bearer, ?token= or connect)")
        }
        guard let user else { throw ParleyError(.unauthorized, "a user id is required (open mode: give 'user')") }
        return Identity(user: try Validation.user(user, limits: limits))
    }
}
