import JWTKit
import ParleyCore

/// Signs HS256 user tokens with the shared secret, for development and tests (`parley token`).
/// Production tokens come from the application's own login service.
public enum TokenMinter {
    public static func hs256(
        user: String, secret: String, expiresIn seconds: Int = 3600, rooms: [String]? = nil,
        issuer: String? = nil, audience: String? = nil, now: Timestamp = .now
    ) async throws -> String {
        guard secret.utf8.count >= 32 else {
            throw AuthConfigurationError("the secret must be at least 32 bytes (256 bits) for HS256")
        }
        let issued = Double(now.milliseconds / 1000)
        let claims = TokenClaims(
            sub: user, exp: issued + Double(seconds), nbf: nil, iss: issuer,
            aud: audience.map { TokenClaims.Audience(values: [$0]) }, rooms: rooms
        )
        let keys = await JWTKeyCollection().add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        return try await keys.sign(claims)
    }
}
