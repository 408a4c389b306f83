import Crypto
import CryptoExtras
import Foundation
import JWTKit

/// Claims as a test wants to write them, including wrong ones.
struct TestClaims: JWTPayload {
    var sub: String?
    var exp: Double?
    var nbf: Double?
    var iss: String?
    var aud: String?
    var rooms: [String]?
    var roles: [String]?

    /// `now`: the time `expiresIn` and `notBeforeIn` count from (seconds since 1970), for a
    /// server on a `ManualClock`; the real time by default.
    init(
        sub: String?, expiresIn: Double? = 3600, notBeforeIn: Double? = nil, iss: String? = nil, aud: String? = nil, rooms: [String]? = nil,
        roles: [String]? = nil, now: Double? = nil
    ) {
        let now = now ?? Date().timeIntervalSince1970.rounded(.down)
        self.sub = sub
        self.exp = expiresIn.map { now + $0 }
        self.nbf = notBeforeIn.map { now + $0 }
        self.iss = iss
        self.aud = aud
        self.rooms = rooms
        self.roles = roles
    }

    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

/// Keys and tokens for the auth tests: made fresh in the process, never committed.
enum Tokens {
    static let secret = "parley-test-secret-0123456789-abcdefghijklmnop"
    static let otherSecret = "another-secret-of-enough-length-0123456789-xyz"

    static let rsa = try! JWTKit.Insecure.RSA.PrivateKey(backing: _RSA.Signing.PrivateKey(keySize: .bits2048))
    static let otherRSA = try! JWTKit.Insecure.RSA.PrivateKey(backing: _RSA.Signing.PrivateKey(keySize: .bits2048))
    static let ec = ES256PrivateKey()
    static let otherEC = ES256PrivateKey()

    static func hs256(_ claims: TestClaims, secret: String = secret) async throws -> String {
        try await JWTKeyCollection().add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256).sign(claims)
    }

    static func rs256(_ claims: TestClaims, key: JWTKit.Insecure.RSA.PrivateKey = rsa, kid: String? = nil) async throws -> String {
        try await JWTKeyCollection().add(rsa: key, digestAlgorithm: .sha256).sign(claims, kid: kid.map { JWKIdentifier(string: $0) })
    }

    static func es256(_ claims: TestClaims, key: ES256PrivateKey = ec, kid: String? = nil) async throws -> String {
        try await JWTKeyCollection().add(ecdsa: key).sign(claims, kid: kid.map { JWKIdentifier(string: $0) })
    }

    /// A token with any header, signed with HMAC-SHA256 over `hmacKey` (or unsigned when nil).
    static func raw(header: [String: Any], _ claims: TestClaims, hmacKey: [UInt8]?) throws -> String {
        let head = base64URL(try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys]))
        let body = base64URL(try JSONEncoder().encode(claims))
        let input = "\(head).\(body)"
        guard let hmacKey else { return input + "." }
        let mac = HMAC<SHA256>.authenticationCode(for: Data(input.utf8), using: SymmetricKey(data: hmacKey))
        return input + "." + base64URL(Data(mac))
    }

    static func base64URL(_ data: Data) -> String {
        data.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    /// Writes `text` to a fresh temporary file and returns its path.
    static func file(_ text: String, name: String) -> String {
        let path = temporaryDirectory() + "/" + name
        _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
        return path
    }

    static func jwk(rsa key: JWTKit.Insecure.RSA.PrivateKey, kid: String) throws -> [String: Any] {
        let (modulus, exponent) = try key.publicKey.getKeyPrimitives()
        return ["kty": "RSA", "kid": kid, "use": "sig", "n": base64URL(modulus), "e": base64URL(exponent)]
    }

    static func jwk(ec key: ES256PrivateKey, kid: String) -> [String: Any] {
        let (x, y) = key.publicKey.parameters!
        return ["kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "x": x, "y": y]
    }

    static func jwks(_ keys: [[String: Any]]) throws -> String {
        String(decoding: try JSONSerialization.data(withJSONObject: ["keys": keys]), as: UTF8.self)
    }
}
