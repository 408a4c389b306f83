import JWTKit

/// The claims Parley reads from a token. Dates stay plain numbers (seconds since the epoch,
/// fractions allowed) so that Parley applies its own leeway; `verify(using:)` checks nothing
/// because `TokenVerifier` checks every claim itself once the signature holds.
struct TokenClaims: JWTPayload {
    var sub: String?
    var exp: Double?
    var nbf: Double?
    var iss: String?
    var aud: Audience?
    var rooms: [String]?
    /// `["moderator"]` makes the token's user a moderator of the rooms it may access.
    var roles: [String]?

    func verify(using algorithm: some JWTAlgorithm) async throws {}

    /// `aud` is a string or an array of strings (RFC 7519 section 4.1.3).
    struct Audience: Codable, Sendable {
        var values: [String]

        init(values: [String]) {
            self.values = values
        }

        init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if let single = try? container.decode(String.self) {
                values = [single]
            } else {
                values = try container.decode([String].self)
            }
        }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            try container.encode(values)
        }
    }
}

/// The protected header fields Parley looks at before it picks a key.
struct TokenHeader: Decodable {
    var alg: String?
    var kid: String?
    var crit: [String]?
}
