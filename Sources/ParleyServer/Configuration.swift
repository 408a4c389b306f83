import Logging
import ParleyAuth
import ParleyCore
import ParleyPostgres
import ParleyRedis

/// Everything a Parley server is started with. Read from flags and environment in one place
/// (`parley serve`); tests build it directly.
public struct ServerConfiguration: Sendable {
    public enum Storage: String, Sendable, CaseIterable {
        /// Embedded SQLite file under `dataDirectory` (the default).
        case sqlite
        /// In memory: for tests and throwaway servers; nothing survives a restart.
        case memory
    }

    /// Address the HTTP/WebSocket server binds.
    public var host = "0.0.0.0"
    /// HTTP/WebSocket/SSE port; 0 picks a free one (see `ParleyServer.onListening`).
    public var port = 8080
    /// gRPC port (ChatService and Health, plaintext HTTP/2); 0 picks a free one.
    public var grpcPort = 50051
    /// Serve gRPC over TLS with this certificate chain and key (PEM); nil is plaintext.
    public var grpcTLS: (certificateChain: String, privateKey: String)?
    public var dataDirectory = "./data"
    public var storage = Storage.sqlite
    public var synchronous = SQLiteSynchronous.full
    public var limits = Limits()
    /// STUN and TURN servers handed to calls (docs/protocol.md, "Calls").
    public var ice = ICEConfiguration()
    /// Web Push (docs/protocol.md, "Web Push"); nil turns it off.
    public var push: PushNotifier.Configuration? = PushNotifier.Configuration()
    /// Webhooks to backends (docs/protocol.md, "Webhooks"); nil sends none.
    public var webhooks: WebhookDispatcher.Configuration?
    /// The synchronous publish hook; nil asks no one.
    public var publishHook: PublishHookConfiguration?
    /// Time a WebSocket client that did not authenticate at upgrade has to send `connect`.
    public var handshakeTimeout: Duration = .seconds(10)
    /// How long a plain HTTP/1 keep-alive connection may wait between requests, and a gRPC
    /// connection with no call open, before it is closed.
    public var idleTimeout: Duration = .seconds(60)
    /// Interval of server pings on idle WebSockets; a client that misses one is closed.
    public var pingInterval: Duration = .seconds(30)
    /// How long a Socket.IO client has to answer the Engine.IO ping (sent every `pingInterval`).
    public var socketIOPingTimeout: Duration = .seconds(20)
    /// Interval of the comment line that keeps idle SSE streams open through proxies.
    public var sseHeartbeat: Duration = .seconds(15)
    /// Folder the web client is served from; nil serves the copy bundled with the server.
    public var publicDirectory: String?
    public var logLevel = Logger.Level.info
    /// JWT keys, API keys and claim checks; none configured is open mode.
    public var auth = AuthConfiguration()
    /// How long a WebSocket whose token expired may send `connect` with a fresh token before
    /// it is closed with 1008.
    public var tokenRefreshGrace: Duration = .seconds(30)
    /// The time token expiry, handshake and refresh deadlines, typing and rate limits follow;
    /// nil is real time (each connection's deadlines on its event loop). Tests give a
    /// `ManualClock` and move it instead of waiting.
    public var clock: (any ParleyClock)?
    /// `Origin`s allowed to open a WebSocket (exact, e.g. `https://chat.example.com`); nil or
    /// `*` allows every origin. Requests without `Origin` (not from a browser) are allowed.
    public var allowedOrigins: [String]?
    /// Origins whose pages may call the HTTP API and SSE (CORS); `*` allows any; empty sends no
    /// CORS headers (same-origin only).
    public var corsOrigins: [String] = []
    /// Redis and PostgreSQL shared by several instances; none by default.
    public var cluster = ClusterConfiguration()

    public init() {}
}

/// Cluster mode: several instances share Redis (pub/sub and presence) and PostgreSQL
/// (history). Each backend is used when it is configured.
public struct ClusterConfiguration: Sendable {
    /// Pub/sub and presence; nil routes in memory (a single instance).
    public var redis: RedisConfiguration?
    /// History; nil keeps it per `ServerConfiguration.storage`.
    public var database: PostgresEndpoint?
    /// How long an instance's heartbeat lives: a dead instance's users get `leave` within
    /// about this plus a fifth of it. Heartbeats go out every fifth of it.
    public var instanceTTL: Duration = .seconds(5)
    /// How often each subscribed room is checked against the store for messages pub/sub lost.
    public var resyncInterval: Duration? = .seconds(10)
    /// A name for this instance in presence, session ids and logs; each run adds a random
    /// suffix to it (the id is wholly random when nil).
    public var instanceID: String?
    /// The base URL (`http://10.0.0.5:8080`) at which the other instances reach this one's HTTP
    /// port: a Socket.IO polling request for a session held here that a load balancer sent to
    /// another instance is forwarded to it. Nil: `http://` + the bind address (127.0.0.1 when
    /// it binds every address) + the port, right for instances on one machine.
    public var advertiseURL: String?

    public init() {}
}

/// `PRAGMA synchronous` of the SQLite store: `full` survives power loss, `normal` a crash.
public enum SQLiteSynchronous: String, Sendable, CaseIterable {
    case full, normal
}

extension ServerConfiguration {
    /// Refuses settings no server can run with. `ParleyServer.build` calls it, so a server
    /// embedded without the `parley` executable is checked the same way.
    public func validate() throws(InvalidConfiguration) {
        func check(_ condition: Bool, _ message: String) throws(InvalidConfiguration) {
            if !condition { throw InvalidConfiguration(description: message) }
        }
        try check((0...65535).contains(port) && (0...65535).contains(grpcPort), "ports must be 0...65535")
        try check(handshakeTimeout > .zero && idleTimeout > .zero, "timeouts must be positive")
        try check(
            limits.ratePerSecond >= 0 && limits.rateBurst >= 0 && limits.commandRatePerSecond >= 0 && limits.commandBurst >= 0
                && (limits.userRatePerSecond ?? 0) >= 0 && (limits.userRateBurst ?? 0) >= 0,
            "rates must be >= 0"
        )
        try check(
            limits.maxContentLength > 0 && limits.maxFrameBytes >= 1024 && limits.maxHistoryLimit > 0 && limits.maxOutboxBytes > 0
                && limits.maxRoomsPerConnection > 0 && limits.presencePageSize > 0,
            "limits must be positive (frames at least 1024 bytes)"
        )
        try check(limits.largeRoomSize >= 0, "the large room size must be >= 0")
        try check((limits.editWindow ?? .zero) >= .zero, "the edit window must be >= 0 seconds")
        try check(limits.maxAttachmentBytes > 0, "the largest attachment must be > 0 bytes")
        try check(ice.turn.isEmpty || ice.turnSecret?.isEmpty == false, "TURN servers need PARLEY_TURN_SECRET")
        if let push {
            try check(
                push.contact.hasPrefix("mailto:") || push.contact.hasPrefix("https://"),
                "the push contact (PARLEY_PUSH_CONTACT) must be a mailto: or https: URL"
            )
            try check(!push.services.patterns.isEmpty, "PARLEY_PUSH_SERVICES needs at least one push service (or turn push off)")
        }
        try check(limits.attachmentQuotaPerDay >= 0, "the attachment quota must be >= 0 bytes")
        try check(limits.orphanAttachmentLifetime > .zero, "unused uploads must live > 0 seconds")
        try check(auth.leewaySeconds >= 0 && tokenRefreshGrace >= .zero, "the JWT leeway and refresh grace must be >= 0")
        try check(limits.maxConnections >= 0 && limits.maxConnectionsPerIP >= 0, "connection limits must be >= 0")
    }
}

/// A `ServerConfiguration` that cannot run; `description` says which setting and why.
public struct InvalidConfiguration: Error, CustomStringConvertible {
    public let description: String
}

/// The publish hook: `url` is asked (a signed POST) before each user message is stored.
public struct PublishHookConfiguration: Sendable {
    public var url: String
    public var secret: [UInt8]
    public var timeout: Duration = .seconds(2)
    /// No answer (or a 5xx) lets the message through; by default it is refused as `unavailable`.
    public var failOpen = false

    public init(url: String, secret: [UInt8]) {
        self.url = url
        self.secret = secret
    }
}
