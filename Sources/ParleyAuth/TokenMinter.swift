import JWTKit
import ParleyCore

/// Signs HS256 user tokens with the shared secret, for development and tests (`parley token`).
/// Production tokens come from the application's own login service.
public enum TokenMinter {
    public static func hs256(
        user: String, secret: String, expiresIn seconds: Int = 3600, rooms: [String]? = nil, roles: [String]? = nil,
        issuer: String? = nil, audience: String? = nil, now: Timestamp = .now
    ) async throws -> String {
        guard !secret.isEmpty else { throw AuthConfigurationError("the secret is empty") }
        let issued = Double(now.milliseconds / 1000)
        let claims = TokenClaims(
            sub: user, exp: issued + Double(seconds), nbf: nil, iss: issuer,
            aud: audience.map { TokenClaims.Audience(values: [$0]) }, rooms: rooms, roles: roles
        )
        let keys = await JWTKeyCollection().add(hmac: hmacKey(secret), digestAlgorithm: .sha256)
        return try await keys.sign(claims)
    }
}
