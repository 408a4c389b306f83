import Foundation
import JWTKit
import ParleyCore

/// Verifies JWTs: the signature with a key chosen by the token's `alg` (and `kid` for a JWKS)
/// among those configured, then `sub`, `exp`, `nbf`, and optionally `iss` and `aud`.
///
/// Each key verifies exactly one algorithm, and the header's `alg` must be that algorithm
/// before any key is used: `alg: none`, an HS256 token made with an RSA public key as its
/// secret, or any algorithm not configured is refused before a signature check.
public struct TokenVerifier: Sendable {
    public enum Algorithm: String, Sendable, CaseIterable {
        case hs256 = "HS256"
        case rs256 = "RS256"
        case es256 = "ES256"
    }

    /// Keys without a `kid` (the HS256 secret, a PEM public key), one per algorithm.
    private let unnamed: [Algorithm: JWTKeyCollection]
    /// JWKS keys by `kid`, each with the one algorithm it verifies.
    private let named: [String: (algorithm: Algorithm, keys: JWTKeyCollection)]
    private let leewayMilliseconds: Int64
    private let issuer: String?
    private let audience: String?
    private let limits: Limits

    /// Longest token accepted, in bytes: anything longer is refused unread.
    public static let maxTokenBytes = 8192

    /// Loads the configured key sources; nil in open mode. Fails with a message naming the
    /// setting when a secret is too short, a file unreadable or a key unusable.
    public static func load(_ configuration: AuthConfiguration, limits: Limits) async throws(AuthConfigurationError) -> TokenVerifier? {
        guard !configuration.isOpen else { return nil }
        guard configuration.leewaySeconds >= 0 else { throw AuthConfigurationError("the JWT leeway must be >= 0 seconds") }
        var unnamed: [Algorithm: JWTKeyCollection] = [:]
        var named: [String: (algorithm: Algorithm, keys: JWTKeyCollection)] = [:]
        if let secret = configuration.jwtSecret {
            guard !secret.isEmpty else { throw AuthConfigurationError("PARLEY_JWT_SECRET is empty") }
            unnamed[.hs256] = await JWTKeyCollection().add(hmac: hmacKey(secret), digestAlgorithm: .sha256)
        }
        if let path = configuration.publicKeyFile {
            let pem = try read(path, setting: "PARLEY_JWT_PUBLIC_KEY_FILE")
            let (algorithm, keys) = try await publicKey(pem, path: path)
            unnamed[algorithm] = keys
        }
        if let path = configuration.jwksFile {
            named = try await jwks(try read(path, setting: "PARLEY_JWT_JWKS_FILE"), path: path)
        }
        return TokenVerifier(
            unnamed: unnamed, named: named, leewayMilliseconds: Int64(configuration.leewaySeconds) * 1000,
            issuer: configuration.issuer, audience: configuration.audience, limits: limits
        )
    }

    /// The algorithms tokens may use, for the start-up log.
    public var algorithms: [String] {
        Set(unnamed.keys.map(\.rawValue) + named.values.map(\.algorithm.rawValue)).sorted()
    }

    /// The identity a valid token establishes; `unauthorized` for any invalid token.
    public func verify(_ token: String, now: Timestamp = .now) async throws(ParleyError) -> Identity {
        guard token.utf8.count <= Self.maxTokenBytes else { throw Self.refused("token is longer than \(Self.maxTokenBytes) bytes") }
        let header = try Self.header(token)
        guard let name = header.alg else { throw Self.refused("token header has no 'alg'") }
        guard name.lowercased() != "none" else { throw Self.refused("unsigned tokens (alg none) are refused") }
        guard let algorithm = Algorithm(rawValue: name) else { throw Self.refused("token algorithm \(name) is not accepted") }
        if let critical = header.crit, !critical.isEmpty { throw Self.refused("token header has unsupported 'crit' extensions") }
        let keys = try keys(for: algorithm, kid: header.kid)
        let claims: TokenClaims
        do {
            claims = try await keys.verify(token, as: TokenClaims.self)
        } catch let error as JWTError where error.errorType == .signatureVerificationFailed {
            throw Self.refused("token signature is invalid")
        } catch {
            throw Self.refused("token is malformed or its signature is invalid")
        }
        return try identity(claims, now: now)
    }

    private func keys(for algorithm: Algorithm, kid: String?) throws(ParleyError) -> JWTKeyCollection {
        if let kid, let key = named[kid] {
            guard key.algorithm == algorithm else { throw Self.refused("key '\(kid)' does not verify \(algorithm.rawValue)") }
            return key.keys
        }
        if let keys = unnamed[algorithm] { return keys }
        if kid == nil, named.count == 1, let only = named.values.first, only.algorithm == algorithm { return only.keys }
        if let kid, !named.isEmpty { throw Self.refused("no key with kid '\(kid)'") }
        throw Self.refused("token algorithm \(algorithm.rawValue) is not accepted")
    }

    private func identity(_ claims: TokenClaims, now: Timestamp) throws(ParleyError) -> Identity {
        guard let sub = claims.sub else { throw Self.refused("token has no 'sub'") }
        guard Validation.isValidUser(sub, limits: limits) else {
            throw Self.refused("token 'sub' is not a valid user id (1 to \(limits.maxUserLength) characters of A-Z a-z 0-9 _ . -)")
        }
        guard let exp = claims.exp, exp.isFinite, let expiry = Self.milliseconds(exp) else {
            throw Self.refused("token has no valid 'exp'")
        }
        let expiresAt = Timestamp(milliseconds: expiry.addingReportingOverflow(leewayMilliseconds).partialValue)
        guard now < expiresAt else { throw Self.refused("token expired") }
        if let nbf = claims.nbf {
            guard let notBefore = Self.milliseconds(nbf) else { throw Self.refused("token has an invalid 'nbf'") }
            guard now.milliseconds + leewayMilliseconds >= notBefore else { throw Self.refused("token is not valid yet") }
        }
        if let issuer, claims.iss != issuer { throw Self.refused("token issuer is not accepted") }
        if let audience, claims.aud?.values.contains(audience) != true { throw Self.refused("token audience is not accepted") }
        return Identity(
            user: sub, rooms: claims.rooms.map(RoomPatterns.init), isModerator: claims.roles?.contains("moderator") == true, expiresAt: expiresAt
        )
    }

    /// Seconds since the epoch as milliseconds; nil when out of any sensible range.
    private static func milliseconds(_ seconds: Double) -> Int64? {
        guard seconds.isFinite, abs(seconds) < 1e13 else { return nil }
        return Int64((seconds * 1000).rounded(.down))
    }

    private static func header(_ token: String) throws(ParleyError) -> TokenHeader {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let data = base64URLDecode(parts[0]),
            let header = try? JSONDecoder().decode(TokenHeader.self, from: data)
        else {
            throw refused("token is not a JWT (header.payload.signature)")
        }
        return header
    }

    static func base64URLDecode(_ text: Substring) -> Data? {
        var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        base64 += String(repeating: "=", count: (4 - base64.count % 4) % 4)
        return Data(base64Encoded: base64)
    }

    static func refused(_ message: String) -> ParleyError { ParleyError(.unauthorized, message) }

    // MARK: Loading keys

    private static func read(_ path: String, setting: String) throws(AuthConfigurationError) -> String {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw AuthConfigurationError("\(setting): cannot read \(path)")
        }
        return text
    }

    private static func publicKey(_ pem: String, path: String) async throws(AuthConfigurationError) -> (Algorithm, JWTKeyCollection) {
        if pem.contains("PRIVATE KEY") {
            throw AuthConfigurationError("PARLEY_JWT_PUBLIC_KEY_FILE: \(path) holds a private key; give the server the public key only")
        }
        if let key = try? Insecure.RSA.PublicKey(pem: pem) {
            return (.rs256, await JWTKeyCollection().add(rsa: key, digestAlgorithm: .sha256))
        }
        if let key = try? ES256PublicKey(pem: pem) {
            return (.es256, await JWTKeyCollection().add(ecdsa: key))
        }
        throw AuthConfigurationError(
            "PARLEY_JWT_PUBLIC_KEY_FILE: \(path) is not a PEM RSA public key of at least 2048 bits (RS256) or P-256 public key (ES256)")
    }

    /// Every RSA and P-256 signing key of the set, each by its `kid`. Keys meant for
    /// encryption (`use: enc`) are skipped; a key that cannot be used otherwise is an error.
    private static func jwks(_ json: String, path: String) async throws(AuthConfigurationError) -> [String: (algorithm: Algorithm, keys: JWTKeyCollection)] {
        func failure(_ why: String) -> AuthConfigurationError { AuthConfigurationError("PARLEY_JWT_JWKS_FILE: \(path): \(why)") }
        guard let object = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
            let entries = object["keys"] as? [[String: Any]]
        else { throw failure("not a JSON Web Key Set ({\"keys\": [...]})") }
        var keys: [String: (algorithm: Algorithm, keys: JWTKeyCollection)] = [:]
        for entry in entries where (entry["use"] as? String ?? "sig") == "sig" {
            guard let kid = entry["kid"] as? String, !kid.isEmpty else { throw failure("every key needs a 'kid'") }
            if entry["d"] != nil { throw failure("key '\(kid)' is a private key; publish public keys only") }
            let algorithm: Algorithm
            switch (entry["kty"] as? String, entry["crv"] as? String) {
            case ("RSA", _): algorithm = .rs256
            case ("EC", "P-256"): algorithm = .es256
            default: throw failure("key '\(kid)' is neither RSA nor EC P-256 (only RS256 and ES256 are accepted)")
            }
            if let alg = entry["alg"] as? String, alg != algorithm.rawValue {
                throw failure("key '\(kid)' is for \(alg); only RS256 (RSA) and ES256 (P-256) are accepted")
            }
            var pinned = entry
            pinned["alg"] = algorithm.rawValue
            do {
                let data = try JSONSerialization.data(withJSONObject: pinned)
                let collection = try await JWTKeyCollection().add(jwk: try JWK(json: String(decoding: data, as: UTF8.self)))
                keys[kid] = (algorithm, collection)
            } catch {
                throw failure("key '\(kid)' is invalid: \(error)")
            }
        }
        guard !keys.isEmpty else { throw failure("holds no signing key") }
        return keys
    }
}

/// The HS256 key of a shared secret. RFC 7518 asks for at least 32 bytes and the server warns
/// about shorter ones, but accepts them: other services are often set up with short secrets.
/// HMAC pads a key shorter than its block (64 bytes for SHA-256) with zero bytes (RFC 2104),
/// so padding it to 32 bytes here signs and verifies exactly as the secret itself does; it only
/// keeps jwt-kit's debug check on key length from stopping the process.
func hmacKey(_ secret: String) -> HMACKey {
    var bytes = Array(secret.utf8)
    if bytes.count < 32 { bytes += [UInt8](repeating: 0, count: 32 - bytes.count) }
    return HMACKey(from: bytes)
}
