/// How clients and backends prove who they are. With no JWT key source configured the server
/// runs in open mode (anyone may claim any user id).
public struct AuthConfiguration: Sendable, Hashable {
    /// HS256 shared secret (`PARLEY_JWT_SECRET`); 32 bytes or more recommended.
    public var jwtSecret: String?
    /// PEM file with an RSA (RS256) or P-256 (ES256) public key (`PARLEY_JWT_PUBLIC_KEY_FILE`).
    public var publicKeyFile: String?
    /// JSON Web Key Set file with RSA and P-256 public keys, chosen by the token's `kid`
    /// (`PARLEY_JWT_JWKS_FILE`).
    public var jwksFile: String?
    /// Backend API keys (`PARLEY_API_KEY`, comma-separated).
    public var apiKeys: [String] = []
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    public var leewaySeconds = 30
    /// When set, a token's `iss` must equal it.
    public var issuer: String?
    /// When set, a token's `aud` must contain it.
    public var audience: String?

    public init() {}

    /// True when no JWT key source is configured.
    public var isOpen: Bool { jwtSecret == nil && publicKeyFile == nil && jwksFile == nil }
}

/// A configuration that cannot be used, with a message naming the setting to fix.
public struct AuthConfigurationError: Error, Sendable, CustomStringConvertible {
    public let message: String
    init(_ message: String) { self.message = message }
    public var description: String { message }
}
