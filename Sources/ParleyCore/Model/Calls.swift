import Crypto

/// One step of a call's signalling, addressed to a user: to one of their sessions, to all of
/// them, or to all but one. It travels on the user's channel, so it reaches them on whatever
/// instance they are connected to, and nobody else.
public struct CallSignal: Sendable, Hashable {
    public enum Kind: String, Sendable, Hashable, CaseIterable {
        /// To the callee's sessions: someone calls (with the ICE servers).
        case ring
        /// The callee took the call on one session (to the caller); `answered` stops the others ringing.
        case accept
        case decline
        /// The callee is in another call.
        case busy
        /// The caller gave up before an answer.
        case cancel
        /// Either party ended the call.
        case hangup
        /// WebRTC: the SDP offer, the SDP answer, an ICE candidate (`data`, opaque).
        case offer, answer, candidate
        /// To the callee's other sessions: the call was taken or declined on one of them.
        case answered
        /// Nobody answered within the ring time; the call is over.
        case missed
    }

    public var call: String
    public var kind: Kind
    public var from: String
    public var fromSession: String
    public var to: String
    /// Only this session of `to`; nil: all of them.
    public var toSession: String?
    /// All sessions of `to` but this one.
    public var exceptSession: String?
    /// SDP or a candidate, as the client sent it (at most `CallSignal.maxData` bytes).
    public var data: String?
    public var video: Bool
    /// On `ring`: the STUN and TURN servers to use.
    public var iceServers: [ICEServer]

    public static let maxData = 16 * 1024

    public init(
        call: String, kind: Kind, from: String, fromSession: String, to: String, toSession: String? = nil, exceptSession: String? = nil,
        data: String? = nil, video: Bool = false, iceServers: [ICEServer] = []
    ) {
        self.call = call
        self.kind = kind
        self.from = from
        self.fromSession = fromSession
        self.to = to
        self.toSession = toSession
        self.exceptSession = exceptSession
        self.data = data
        self.video = video
        self.iceServers = iceServers
    }

    /// Whether `session` (of `to`) is meant to receive it.
    public func isFor(session: String) -> Bool {
        if let toSession, toSession != session { return false }
        if let exceptSession, exceptSession == session { return false }
        return true
    }
}

/// A STUN or TURN server as `RTCPeerConnection` takes it.
public struct ICEServer: Sendable, Hashable {
    public var urls: [String]
    public var username: String?
    public var credential: String?

    public init(urls: [String], username: String? = nil, credential: String? = nil) {
        self.urls = urls
        self.username = username
        self.credential = credential
    }
}

/// Where calls find their way: STUN servers, and TURN servers with time-limited credentials
/// derived from a shared secret (the TURN REST scheme coturn's `use-auth-secret` implements:
/// the username is `<expiry>:<user>`, the password base64(HMAC-SHA1(secret, username))).
public struct ICEConfiguration: Sendable, Hashable {
    public var stun: [String] = []
    public var turn: [String] = []
    public var turnSecret: String?
    public var turnCredentialLifetime: Duration = .seconds(24 * 3600)

    public init() {}

    public func servers(for user: String, at now: Timestamp) -> [ICEServer] {
        var servers: [ICEServer] = []
        if !stun.isEmpty { servers.append(ICEServer(urls: stun)) }
        if !turn.isEmpty, let turnSecret {
            let expiry = now.milliseconds / 1000 + turnCredentialLifetime.milliseconds / 1000
            let username = "\(expiry):\(user)"
            let mac = HMAC<Insecure.SHA1>.authenticationCode(for: Array(username.utf8), using: SymmetricKey(data: Array(turnSecret.utf8)))
            servers.append(ICEServer(urls: turn, username: username, credential: Base64.encode(Array(mac))))
        }
        return servers
    }
}

/// A call's id, which is also its credential: who calls whom, from which session, when, signed
/// with the cluster's call secret. Any instance can check that a signal comes from one of the
/// two parties without shared state: `c:<caller>:<session>:<callee>:<ms>:<v>:<nonce>:<mac>`
/// (user ids never contain `:`).
public struct CallID: Sendable, Hashable {
    public var caller: String
    public var callerSession: String
    public var callee: String
    public var started: Timestamp
    public var video: Bool
    public var nonce: String

    public init(caller: String, callerSession: String, callee: String, started: Timestamp, video: Bool, nonce: String = MessageID.next()) {
        self.caller = caller
        self.callerSession = callerSession
        self.callee = callee
        self.started = started
        self.video = video
        self.nonce = nonce
    }

    private var payload: String {
        "c:\(caller):\(callerSession):\(callee):\(started.milliseconds):\(video ? 1 : 0):\(nonce)"
    }

    public func signed(with secret: [UInt8]) -> String {
        payload + ":" + Self.mac(payload, secret)
    }

    /// The call an id names, when it carries a valid signature; nil otherwise.
    public init?(_ id: String, secret: [UInt8]) {
        let parts = id.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 8, parts[0] == "c", let ms = Int64(parts[4]), parts[5] == "0" || parts[5] == "1" else { return nil }
        self.init(caller: parts[1], callerSession: parts[2], callee: parts[3], started: Timestamp(milliseconds: ms), video: parts[5] == "1", nonce: parts[6])
        let expected = Self.mac(payload, secret)
        // Constant time: compare every byte whatever the first difference.
        guard expected.utf8.count == parts[7].utf8.count,
            zip(expected.utf8, parts[7].utf8).reduce(0, { $0 | ($1.0 ^ $1.1) }) == 0
        else { return nil }
    }

    private static func mac(_ payload: String, _ secret: [UInt8]) -> String {
        let code = HMAC<SHA256>.authenticationCode(for: Array(payload.utf8), using: SymmetricKey(data: secret))
        return UploadReader.hex(Array(code).prefix(16))
    }
}

/// Base64: the standard alphabet, padded (TURN credentials), and the URL-safe one without
/// padding (Web Push keys, JWTs).
public enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    private static let urlAlphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    public static func encode(_ bytes: some Collection<UInt8>, url: Bool = false) -> String {
        let bytes = Array(bytes)
        let letters = url ? urlAlphabet : alphabet
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var index = 0
        while index < bytes.count {
            let chunk = bytes[index..<min(index + 3, bytes.count)]
            let value = chunk.enumerated().reduce(0) { $0 | Int($1.element) << (16 - 8 * $1.offset) }
            for position in 0..<4 {
                if position <= chunk.count {
                    out.append(letters[(value >> (18 - 6 * position)) & 63])
                } else if !url {
                    out.append(UInt8(ascii: "="))
                }
            }
            index += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes either alphabet, with or without padding; nil for anything else.
    public static func decode(_ text: some StringProtocol) -> [UInt8]? {
        var bits = 0
        var count = 0
        var out: [UInt8] = []
        var padding = 0
        for byte in text.utf8 {
            let value: Int
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = Int(byte) - 65
            case UInt8(ascii: "a")...UInt8(ascii: "z"): value = Int(byte) - 71
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = Int(byte) + 4
            case UInt8(ascii: "+"), UInt8(ascii: "-"): value = 62
            case UInt8(ascii: "/"), UInt8(ascii: "_"): value = 63
            case UInt8(ascii: "="):
                padding += 1
                continue
            default: return nil
            }
            guard padding == 0 else { return nil }
            bits = bits << 6 | value
            count += 6
            if count >= 8 {
                count -= 8
                out.append(UInt8((bits >> count) & 0xFF))
                bits &= (1 << count) - 1
            }
        }
        // A lone character left over (6 bits) is no byte: not base64.
        guard count < 6, padding <= 2 else { return nil }
        return out
    }
}
