import Crypto

/// A browser's push subscription, as `PushSubscription.toJSON()` gives it: where to send, and
/// the keys its pushes are encrypted for.
public struct PushSubscription: Sendable, Hashable {
    public var user: String
    /// The push service's URL for this browser (its capability: whoever knows it can push).
    public var endpoint: String
    /// The browser's P-256 public key, uncompressed (65 bytes).
    public var p256dh: [UInt8]
    /// The browser's authentication secret (16 bytes).
    public var auth: [UInt8]

    public static let maxEndpointLength = 1024

    public init(user: String, endpoint: String, p256dh: [UInt8], auth: [UInt8]) {
        self.user = user
        self.endpoint = endpoint
        self.p256dh = p256dh
        self.auth = auth
    }

    /// A subscription from a client's strings (base64url keys), or `bad_request` saying what
    /// is wrong; an endpoint outside `services` is `forbidden`.
    public static func checked(
        user: String, endpoint: String, p256dh: String, auth: String, services: PushServices
    ) throws(ParleyError) -> PushSubscription {
        guard !endpoint.isEmpty, endpoint.utf8.count <= maxEndpointLength else {
            throw .badRequest("endpoint must be a URL of at most \(maxEndpointLength) bytes")
        }
        guard let origin = PushServices.origin(of: endpoint) else { throw .badRequest("endpoint must be an http(s) URL") }
        guard services.allows(endpoint) else {
            throw ParleyError(.forbidden, "push service \(origin) is not allowed here (PARLEY_PUSH_SERVICES)")
        }
        guard let key = Base64.decode(p256dh), key.count == 65, key.first == 4,
            (try? P256.KeyAgreement.PublicKey(x963Representation: key)) != nil
        else { throw .badRequest("keys.p256dh must be an uncompressed P-256 public key (65 bytes, base64url)") }
        guard let secret = Base64.decode(auth), secret.count == 16 else {
            throw .badRequest("keys.auth must be 16 bytes, base64url")
        }
        return PushSubscription(user: user, endpoint: endpoint, p256dh: key, auth: secret)
    }
}

/// The push services Parley may send to. A subscription names a URL that the server then
/// POSTs to, so it is checked against this list: any URL would let a user aim the server at
/// hosts inside its network. Patterns are origins, `https://fcm.googleapis.com`, with an
/// optional `*.` before the host (`https://*.notify.windows.com`: that domain's subdomains)
/// and an optional port; `*` allows every http(s) URL.
public struct PushServices: Sendable, Hashable {
    public var patterns: [String]

    /// The services of Chrome, Edge, Firefox and Safari.
    public static let browsers = PushServices(patterns: [
        "https://fcm.googleapis.com", "https://updates.push.services.mozilla.com", "https://*.push.apple.com",
        "https://*.notify.windows.com",
    ])

    public init(patterns: [String]) {
        self.patterns = patterns
    }

    public func allows(_ endpoint: String) -> Bool {
        guard let target = Self.parts(of: endpoint) else { return false }
        return patterns.contains { pattern in
            if pattern == "*" { return true }
            guard let allowed = Self.parts(of: pattern, wildcard: true) else { return false }
            guard allowed.scheme == target.scheme, allowed.port == target.port else { return false }
            if allowed.host.hasPrefix("*.") {
                return target.host.hasSuffix(allowed.host.dropFirst(1)) && target.host.count > allowed.host.count - 1
            }
            return allowed.host == target.host
        }
    }

    /// `scheme://host[:port]` of an http(s) URL (what VAPID's `aud` names); nil otherwise.
    public static func origin(of url: String) -> String? {
        guard let parts = parts(of: url) else { return nil }
        let defaultPort = parts.scheme == "https" ? 443 : 80
        return parts.scheme + "://" + parts.host + (parts.port == defaultPort ? "" : ":\(parts.port)")
    }

    private static func parts(of url: String, wildcard: Bool = false) -> (scheme: String, host: String, port: Int)? {
        let scheme: String
        let rest: Substring
        if url.hasPrefix("https://") {
            (scheme, rest) = ("https", url.dropFirst(8))
        } else if url.hasPrefix("http://") {
            (scheme, rest) = ("http", url.dropFirst(7))
        } else {
            return nil
        }
        let authority = rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        // No user info, no IPv6 literal: push services have plain host names.
        guard !authority.isEmpty, !authority.contains("@"), !authority.contains("[") else { return nil }
        let pieces = authority.split(separator: ":", omittingEmptySubsequences: false)
        guard pieces.count <= 2, !pieces[0].isEmpty else { return nil }
        var port = scheme == "https" ? 443 : 80
        if pieces.count == 2 {
            guard let number = Int(pieces[1]), (1...65535).contains(number) else { return nil }
            port = number
        }
        let host = pieces[0].lowercased()
        let allowed = host.utf8.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."): true
            case UInt8(ascii: "*"): wildcard
            default: false
            }
        }
        guard allowed else { return nil }
        return (scheme, host, port)
    }
}

/// Message encryption for Web Push (RFC 8291) in the `aes128gcm` content coding (RFC 8188):
/// one record, the sender's ephemeral public key as the key id.
public enum WebPushEncryption {
    /// The record size Parley declares; a payload must fit one record.
    public static let recordSize = 4096
    /// Largest payload: what push services accept (4096 bytes of body) less the header
    /// (86 bytes), the padding delimiter (1) and the tag (16).
    public static let maxPayload = 4096 - 86 - 1 - 16

    /// The body of a push of `payload` to the browser whose keys are `p256dh` and `auth`.
    /// `salt` and `serverKey` are random unless given (tests give the RFC's).
    public static func encrypt(
        _ payload: [UInt8], p256dh: [UInt8], auth: [UInt8], salt: [UInt8]? = nil, serverKey: P256.KeyAgreement.PrivateKey? = nil
    ) throws -> [UInt8] {
        precondition(payload.count <= maxPayload, "a push payload must fit one record")
        let salt = salt ?? (0..<16).map { _ in UInt8.random(in: .min ... .max) }
        let serverKey = serverKey ?? P256.KeyAgreement.PrivateKey()
        let userAgentKey = try P256.KeyAgreement.PublicKey(x963Representation: p256dh)
        let serverPublic = Array(serverKey.publicKey.x963Representation)
        let shared = try serverKey.sharedSecretFromKeyAgreement(with: userAgentKey)
        // IKM = HKDF(salt: auth, ikm: ECDH secret, info: "WebPush: info" 0 ua_public as_public, 32)
        let keyInfo = Array("WebPush: info".utf8) + [0] + p256dh + serverPublic
        let inputKey = shared.withUnsafeBytes { secret in
            HKDF<SHA256>.deriveKey(
                inputKeyMaterial: SymmetricKey(data: secret), salt: auth, info: keyInfo, outputByteCount: 32
            )
        }
        let contentKey = HKDF<SHA256>.deriveKey(
            inputKeyMaterial: inputKey, salt: salt, info: Array("Content-Encoding: aes128gcm".utf8) + [0], outputByteCount: 16
        )
        let nonce = HKDF<SHA256>.deriveKey(
            inputKeyMaterial: inputKey, salt: salt, info: Array("Content-Encoding: nonce".utf8) + [0], outputByteCount: 12
        )
        // The last (only) record ends with the delimiter 2 and no padding.
        let sealed = try AES.GCM.seal(
            payload + [2], using: contentKey, nonce: AES.GCM.Nonce(data: nonce.withUnsafeBytes { Array($0) })
        )
        var body: [UInt8] = salt
        body.reserveCapacity(86 + payload.count + 17)
        let size = UInt32(recordSize)
        body += [UInt8(size >> 24), UInt8(size >> 16 & 0xFF), UInt8(size >> 8 & 0xFF), UInt8(size & 0xFF)]
        body.append(UInt8(serverPublic.count))
        body += serverPublic
        body += sealed.ciphertext
        body += sealed.tag
        return body
    }
}

/// The server's VAPID key (RFC 8292): a P-256 signing key the browser learns when it
/// subscribes (`applicationServerKey`), and that signs a JWT on every push so that the push
/// service knows the push comes from the server the subscription was made for.
public struct VAPIDKey: Sendable {
    let key: P256.Signing.PrivateKey

    /// The key whose scalar is `secret` (32 random bytes kept in the store); a value outside
    /// the curve's range (odds of about 2^-32) is hashed until it fits.
    public init(secret: [UInt8]) {
        var candidate = secret
        while true {
            if let key = try? P256.Signing.PrivateKey(rawRepresentation: candidate) {
                self.key = key
                return
            }
            candidate = Array(SHA256.hash(data: candidate))
        }
    }

    /// The public key, uncompressed: the `applicationServerKey` browsers subscribe with.
    public var publicKey: [UInt8] { Array(key.publicKey.x963Representation) }

    /// The `Authorization` header of a push to `endpoint`: `vapid t=<JWT>, k=<public key>`,
    /// the JWT (ES256) naming the push service's origin (`aud`), `expiry` (`exp`, at most 24 h
    /// ahead) and `contact` (`sub`, a `mailto:` or `https:` URL).
    public func authorization(endpoint: String, contact: String, expiry: Timestamp) throws -> String {
        guard let audience = PushServices.origin(of: endpoint) else { throw ParleyError.badRequest("not an http(s) endpoint") }
        let header = Base64.encode(Array(#"{"typ":"JWT","alg":"ES256"}"#.utf8), url: true)
        let claims = #"{"aud":"# + JSONText.quote(audience) + #","exp":"# + String(expiry.milliseconds / 1000) + #","sub":"#
            + JSONText.quote(contact) + "}"
        let input = header + "." + Base64.encode(Array(claims.utf8), url: true)
        let signature = try key.signature(for: Array(input.utf8)).rawRepresentation
        return "vapid t=" + input + "." + Base64.encode(Array(signature), url: true) + ", k=" + Base64.encode(publicKey, url: true)
    }
}

/// JSON string literals, for the few documents the core writes itself.
public enum JSONText {
    public static func quote(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
