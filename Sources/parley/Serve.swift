import ArgumentParser
import Logging
import ParleyAuth
import ParleyCore
import ParleyPostgres
import ParleyRedis
import ParleyServer

#if canImport(Glibc)
import Glibc
#endif

/// `parley serve`: every setting is a flag, an environment variable, or its default, in that
/// order of precedence. The environment names are those of PROTOCOL.md.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start the chat server (HTTP, WebSocket) on its embedded defaults.",
        discussion: """
            Every option can also be set by the environment variable named in its help; a flag \
            wins over the environment. With no option at all Parley listens on 0.0.0.0:8080 and \
            keeps history in ./data/parley.sqlite.
            """
    )

    @Option(help: "Address to bind. [env: PARLEY_HOST] (default: 0.0.0.0)")
    var host: String?

    @Option(help: "HTTP, WebSocket and SSE port; 0 picks a free port. [env: PORT] (default: 8080)")
    var port: Int?

    @Option(help: "gRPC port (chat.v1.ChatService and grpc.health.v1.Health); 0 picks a free one. [env: PARLEY_GRPC_PORT] (default: 50051)")
    var grpcPort: Int?

    @Option(help: "Folder of the SQLite history file. [env: PARLEY_DATA_DIR] (default: ./data)")
    var dataDir: String?

    @Option(help: "History storage: sqlite (durable) or memory (tests only). [env: PARLEY_STORAGE] (default: sqlite)")
    var storage: String?

    @Option(help: "SQLite sync: full (survives power loss) or normal (survives a crash). [env: PARLEY_SQLITE_SYNCHRONOUS] (default: full)")
    var sqliteSynchronous: String?

    @Option(help: "Messages per second each connection may publish; 0 turns the limit off. [env: PARLEY_RATE_PER_SEC] (default: 20)")
    var ratePerSec: Double?

    @Option(help: "Burst of the per-connection publish rate. [env: PARLEY_RATE_BURST] (default: 40)")
    var rateBurst: Double?

    @Option(help: "Longest message, in characters after trimming. [env: PARLEY_MAX_CONTENT_CHARS] (default: 4000)")
    var maxContentChars: Int?

    @Option(help: "Largest WebSocket frame or HTTP body, in bytes. [env: PARLEY_MAX_FRAME_BYTES] (default: 65536)")
    var maxFrameBytes: Int?

    @Option(help: "Largest history page a client may ask for. [env: PARLEY_MAX_HISTORY_LIMIT] (default: 100)")
    var maxHistoryLimit: Int?

    @Option(help: "Unsent bytes after which a slow connection is closed with 1013. [env: PARLEY_OUTBOX_BYTES] (default: 4194304)")
    var outboxBytes: Int?

    @Option(help: "Rooms one connection may join. [env: PARLEY_MAX_ROOMS_PER_CONNECTION] (default: 100)")
    var maxRoomsPerConnection: Int?

    @Option(help: "Seconds a WebSocket client has to authenticate. [env: PARLEY_HANDSHAKE_TIMEOUT] (default: 10)")
    var handshakeTimeout: Int?

    @Option(help: "Commands other than publishing (join, leave, history, presence) one connection may send per second; 0 off. [env: PARLEY_COMMAND_RATE_PER_SEC] (default: 20)")
    var commandRatePerSec: Double?

    @Option(help: "Burst of that budget; a history page costs 1 + limit/25. [env: PARLEY_COMMAND_BURST] (default: 120)")
    var commandBurst: Double?

    @Option(help: "STUN servers for calls, comma-separated (stun:host:port). [env: PARLEY_STUN_URLS]")
    var stun: String?

    @Option(help: "TURN servers for calls, comma-separated (turn:host:port?transport=udp). [env: PARLEY_TURN_URLS]")
    var turn: String?

    @Option(help: "The TURN server's shared secret (coturn use-auth-secret); prefer the environment. [env: PARLEY_TURN_SECRET]")
    var turnSecret: String?

    @Option(help: "Push services browsers' subscriptions may point at, comma-separated origins (https://*.push.apple.com), * for any, or off to turn Web Push off. [env: PARLEY_PUSH_SERVICES] (default: the services of Chrome, Edge, Firefox and Safari)")
    var pushServices: String?

    @Option(help: "How push services can reach whoever runs this server: a mailto: or https: URL (VAPID sub). [env: PARLEY_PUSH_CONTACT] (default: mailto:parley@localhost)")
    var pushContact: String?

    @Option(help: "PEM certificate chain to serve gRPC over TLS with (with --grpc-tls-key). [env: PARLEY_GRPC_TLS_CERT]")
    var grpcTlsCert: String?

    @Option(help: "PEM private key of --grpc-tls-cert. [env: PARLEY_GRPC_TLS_KEY]")
    var grpcTlsKey: String?

    @Option(help: "Backend URLs that receive room events as signed webhooks, comma-separated. [env: PARLEY_WEBHOOK_URLS] (default: none)")
    var webhookUrls: String?

    @Option(help: "The secret webhooks and the publish hook are signed with (HMAC-SHA256); needed with either. [env: PARLEY_WEBHOOK_SECRET]")
    var webhookSecret: String?

    @Option(help: "Events sent by webhook: message, edit, delete, reaction, moderation, join, leave, read, comma-separated. [env: PARLEY_WEBHOOK_EVENTS] (default: all)")
    var webhookEvents: String?

    @Option(help: "Attempts at a webhook before it becomes a dead letter. [env: PARLEY_WEBHOOK_ATTEMPTS] (default: 12)")
    var webhookAttempts: Int?

    @Option(help: "Milliseconds before a failed webhook's first retry; each next one doubles, up to 10 minutes. [env: PARLEY_WEBHOOK_RETRY_MS] (default: 1000)")
    var webhookRetryMs: Int?

    @Option(help: "A backend URL asked before each user message is stored (the publish hook). [env: PARLEY_PUBLISH_HOOK_URL] (default: none)")
    var publishHookUrl: String?

    @Option(help: "Milliseconds the publish hook has to answer. [env: PARLEY_PUBLISH_HOOK_TIMEOUT_MS] (default: 2000)")
    var publishHookTimeoutMs: Int?

    @Option(help: "When the publish hook does not answer: closed refuses the message (unavailable), open lets it through. [env: PARLEY_PUBLISH_HOOK_FAILURE] (default: closed)")
    var publishHookFailure: String?

    @Option(help: "Largest attachment in bytes. [env: PARLEY_MAX_ATTACHMENT_BYTES] (default: 26214400, 25 MiB)")
    var maxAttachmentBytes: Int?

    @Option(help: "Bytes one user may upload in 24 hours; 0: no quota. [env: PARLEY_ATTACHMENT_QUOTA] (default: 1073741824, 1 GiB)")
    var attachmentQuota: Int?

    @Option(help: "Seconds an upload may wait to be put in a message before it is deleted. [env: PARLEY_UNUSED_UPLOAD_SECONDS] (default: 3600)")
    var unusedUploadSeconds: Int?

    @Option(help: "Seconds after sending during which an author may edit a message; 0: any time. [env: PARLEY_EDIT_WINDOW] (default: 86400)")
    var editWindow: Int?

    @Option(help: "Above this many users present, a room's joins and leaves go out as one presence update per second; 0 sends each. [env: PARLEY_LARGE_ROOM_SIZE] (default: 50)")
    var largeRoomSize: Int?

    @Option(help: "Seconds an HTTP keep-alive connection may wait between requests, and a gRPC connection with no call. [env: PARLEY_IDLE_TIMEOUT] (default: 60)")
    var idleTimeout: Int?

    @Option(help: "HS256 secret (32 bytes or more recommended); turns JWT auth on (prefer the environment: flags show in ps). [env: PARLEY_JWT_SECRET]")
    var jwtSecret: String?

    @Option(help: "PEM RSA (RS256) or P-256 (ES256) public key file; turns JWT auth on. [env: PARLEY_JWT_PUBLIC_KEY_FILE]")
    var jwtPublicKeyFile: String?

    @Option(help: "JSON Web Key Set file (RS256/ES256 keys chosen by kid); turns JWT auth on. [env: PARLEY_JWT_JWKS_FILE]")
    var jwtJwksFile: String?

    @Option(help: "Seconds of clock skew tolerated on exp and nbf. [env: PARLEY_JWT_LEEWAY] (default: 30)")
    var jwtLeeway: Int?

    @Option(help: "Required token issuer (iss). [env: PARLEY_JWT_ISSUER]")
    var jwtIssuer: String?

    @Option(help: "Required token audience (aud). [env: PARLEY_JWT_AUDIENCE]")
    var jwtAudience: String?

    @Option(help: "Backend API keys, comma-separated (prefer the environment). [env: PARLEY_API_KEY]")
    var apiKey: String?

    @Option(help: "Seconds a WebSocket whose token expired has to send a fresh one. [env: PARLEY_TOKEN_REFRESH_GRACE] (default: 30)")
    var tokenRefreshGrace: Int?

    @Option(help: "Messages per second one user may publish over all connections. [env: PARLEY_USER_RATE_PER_SEC] (default: twice --rate-per-sec)")
    var userRatePerSec: Double?

    @Option(help: "Burst of the per-user publish rate. [env: PARLEY_USER_RATE_BURST] (default: twice --rate-burst)")
    var userRateBurst: Double?

    @Option(help: "Open WebSocket and SSE connections in total; 0 means no limit. [env: PARLEY_MAX_CONNECTIONS] (default: 0)")
    var maxConnections: Int?

    @Option(help: "Open WebSocket and SSE connections per client IP; 0 means no limit. [env: PARLEY_MAX_CONNECTIONS_PER_IP] (default: 0)")
    var maxConnectionsPerIp: Int?

    @Option(help: "Origins allowed to open a WebSocket, comma-separated, or *. [env: PARLEY_ALLOWED_ORIGINS] (default: *)")
    var allowedOrigins: String?

    @Option(help: "Origins allowed to call the HTTP API and SSE from a browser (CORS), comma-separated, or *. [env: PARLEY_CORS_ORIGINS] (default: none)")
    var corsOrigins: String?

    @Option(help: "Folder to serve the web client from instead of the bundled one. [env: PARLEY_PUBLIC_DIR]")
    var publicDir: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical. [env: PARLEY_LOG_LEVEL] (default: info)")
    var logLevel: String?

    @Option(help: "PEM file of the CA that signed the Redis server's certificate, for rediss:// (the system's roots otherwise). [env: PARLEY_REDIS_CA_FILE]")
    var redisCaFile: String?

    @Option(help: "Redis for cluster mode (pub/sub, presence): redis[s]://[[user]:password@]host[:port][/db] (rediss: TLS). [env: PARLEY_REDIS_URL, or REDIS_HOST, REDIS_PORT, REDIS_PASSWORD]")
    var redis: String?

    @Option(help: "PostgreSQL for cluster mode (history): postgres://user:password@host:port/database[?sslmode=require]. [env: PARLEY_DATABASE_URL]")
    var database: String?

    @Option(help: "Milliseconds an instance's Redis heartbeat lives; a dead instance's users get leave within about 1.2x this. [env: PARLEY_INSTANCE_TTL_MS] (default: 5000)")
    var instanceTtlMs: Int?

    @Option(help: "Seconds between checks of every subscribed room against the store, for messages pub/sub lost; 0 never. [env: PARLEY_RESYNC_INTERVAL] (default: 10)")
    var resyncInterval: Double?

    @Option(help: "A name for this instance in cluster presence and logs; each run adds a random suffix. [env: PARLEY_INSTANCE_ID]")
    var instanceId: String?

    @Option(help: "Base URL other instances reach this one's HTTP port at, for Socket.IO polling requests a load balancer sent to them. [env: PARLEY_ADVERTISE_URL] (default: http://127.0.0.1:PORT, or the --host address)")
    var advertiseUrl: String?

    func run() async throws {
        let configuration: ServerConfiguration
        do {
            configuration = try resolve(environment: Environment.current)
            try configuration.validate()
        } catch let error as ConfigurationError {
            throw ValidationError(error.message)
        } catch let error as InvalidConfiguration {
            throw ValidationError(error.description)
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = configuration.logLevel
            return handler
        }
        let logger = Logger(label: "parley")
        logger.info("can hold about \(raiseOpenFilesLimit()) connections (open files limit)")
        let server: ParleyServer
        do {
            server = try await ParleyServer.build(configuration, logger: logger)
        } catch let error as AuthConfigurationError {
            throw ValidationError(error.message)
        }
        do {
            try await server.makeServiceGroup().run()
        } catch {
            // Every service has stopped; say why before exiting non-zero.
            logger.critical("parley stopped: \(error)")
            throw ExitCode.failure
        }
    }

    func resolve(environment env: Environment) throws -> ServerConfiguration {
        var c = ServerConfiguration()
        c.host = host ?? env["PARLEY_HOST"] ?? c.host
        c.port = try port ?? env.int("PORT") ?? c.port
        c.grpcPort = try grpcPort ?? env.int("PARLEY_GRPC_PORT") ?? c.grpcPort
        c.dataDirectory = dataDir ?? env["PARLEY_DATA_DIR"] ?? c.dataDirectory
        c.storage = try env.choice(storage ?? env["PARLEY_STORAGE"], "storage") ?? c.storage
        c.synchronous = try env.choice(sqliteSynchronous ?? env["PARLEY_SQLITE_SYNCHRONOUS"], "sqlite-synchronous") ?? c.synchronous
        c.limits.ratePerSecond = try ratePerSec ?? env.double("PARLEY_RATE_PER_SEC") ?? c.limits.ratePerSecond
        c.limits.rateBurst = try rateBurst ?? env.double("PARLEY_RATE_BURST") ?? c.limits.rateBurst
        c.limits.maxContentLength = try maxContentChars ?? env.int("PARLEY_MAX_CONTENT_CHARS") ?? c.limits.maxContentLength
        c.limits.maxFrameBytes = try maxFrameBytes ?? env.int("PARLEY_MAX_FRAME_BYTES") ?? c.limits.maxFrameBytes
        c.limits.maxHistoryLimit = try maxHistoryLimit ?? env.int("PARLEY_MAX_HISTORY_LIMIT") ?? c.limits.maxHistoryLimit
        c.limits.defaultHistoryLimit = min(c.limits.defaultHistoryLimit, c.limits.maxHistoryLimit)
        c.limits.maxOutboxBytes = try outboxBytes ?? env.int("PARLEY_OUTBOX_BYTES") ?? c.limits.maxOutboxBytes
        c.limits.maxRoomsPerConnection = try maxRoomsPerConnection ?? env.int("PARLEY_MAX_ROOMS_PER_CONNECTION") ?? c.limits.maxRoomsPerConnection
        if let seconds = try handshakeTimeout ?? env.int("PARLEY_HANDSHAKE_TIMEOUT") { c.handshakeTimeout = .seconds(seconds) }
        if let seconds = try idleTimeout ?? env.int("PARLEY_IDLE_TIMEOUT") { c.idleTimeout = .seconds(seconds) }
        c.publicDirectory = publicDir ?? env["PARLEY_PUBLIC_DIR"]
        try resolveSecurity(&c, environment: env)
        if let level = logLevel ?? env["PARLEY_LOG_LEVEL"] {
            guard let parsed = Logger.Level(rawValue: level) else { throw ConfigurationError("invalid log level '\(level)'") }
            c.logLevel = parsed
        }
        try resolveCluster(&c.cluster, environment: env)
        return c
    }

    /// Authentication and abuse limits.
    private func resolveSecurity(_ c: inout ServerConfiguration, environment env: Environment) throws {
        c.auth.jwtSecret = try env.required("PARLEY_JWT_SECRET", flag: jwtSecret)
        c.auth.publicKeyFile = try env.required("PARLEY_JWT_PUBLIC_KEY_FILE", flag: jwtPublicKeyFile)
        c.auth.jwksFile = try env.required("PARLEY_JWT_JWKS_FILE", flag: jwtJwksFile)
        c.auth.leewaySeconds = try jwtLeeway ?? env.int("PARLEY_JWT_LEEWAY") ?? c.auth.leewaySeconds
        c.auth.issuer = jwtIssuer ?? env["PARLEY_JWT_ISSUER"]
        c.auth.audience = jwtAudience ?? env["PARLEY_JWT_AUDIENCE"]
        c.auth.apiKeys = Environment.list(try env.required("PARLEY_API_KEY", flag: apiKey)) ?? []
        if let keys = apiKey ?? env.values["PARLEY_API_KEY"], c.auth.apiKeys.isEmpty, !keys.isEmpty {
            throw ConfigurationError("PARLEY_API_KEY holds no key (only commas and blanks)")
        }
        if let seconds = try tokenRefreshGrace ?? env.int("PARLEY_TOKEN_REFRESH_GRACE") { c.tokenRefreshGrace = .seconds(seconds) }
        c.limits.userRatePerSecond = try userRatePerSec ?? env.double("PARLEY_USER_RATE_PER_SEC")
        c.limits.userRateBurst = try userRateBurst ?? env.double("PARLEY_USER_RATE_BURST")
        c.limits.commandRatePerSecond = try commandRatePerSec ?? env.double("PARLEY_COMMAND_RATE_PER_SEC") ?? c.limits.commandRatePerSecond
        c.limits.commandBurst = try commandBurst ?? env.double("PARLEY_COMMAND_BURST") ?? c.limits.commandBurst
        c.limits.largeRoomSize = try largeRoomSize ?? env.int("PARLEY_LARGE_ROOM_SIZE") ?? c.limits.largeRoomSize
        c.ice.stun = Environment.list(stun ?? env["PARLEY_STUN_URLS"]) ?? []
        c.ice.turn = Environment.list(turn ?? env["PARLEY_TURN_URLS"]) ?? []
        c.ice.turnSecret = turnSecret ?? env["PARLEY_TURN_SECRET"]
        if let services = pushServices ?? env["PARLEY_PUSH_SERVICES"], services.trimmingCharacters(in: .whitespaces) == "off" {
            c.push = nil
        } else {
            var push = PushNotifier.Configuration()
            if let services = Environment.list(pushServices ?? env["PARLEY_PUSH_SERVICES"]) { push.services = PushServices(patterns: services) }
            if let contact = pushContact ?? env["PARLEY_PUSH_CONTACT"] { push.contact = contact }
            c.push = push
        }
        if let bytes = try maxAttachmentBytes ?? env.int("PARLEY_MAX_ATTACHMENT_BYTES") { c.limits.maxAttachmentBytes = Int64(bytes) }
        if let bytes = try attachmentQuota ?? env.int("PARLEY_ATTACHMENT_QUOTA") { c.limits.attachmentQuotaPerDay = Int64(bytes) }
        if let seconds = try unusedUploadSeconds ?? env.int("PARLEY_UNUSED_UPLOAD_SECONDS") { c.limits.orphanAttachmentLifetime = .seconds(seconds) }
        if let seconds = try editWindow ?? env.int("PARLEY_EDIT_WINDOW") {
            c.limits.editWindow = seconds == 0 ? nil : .seconds(seconds)
        }
        c.limits.maxConnections = try maxConnections ?? env.int("PARLEY_MAX_CONNECTIONS") ?? c.limits.maxConnections
        c.limits.maxConnectionsPerIP = try maxConnectionsPerIp ?? env.int("PARLEY_MAX_CONNECTIONS_PER_IP") ?? c.limits.maxConnectionsPerIP
        try resolveWebhooks(&c, environment: env)
        switch (grpcTlsCert ?? env["PARLEY_GRPC_TLS_CERT"], grpcTlsKey ?? env["PARLEY_GRPC_TLS_KEY"]) {
        case (nil, nil): break
        case (let certificate?, let key?): c.grpcTLS = (certificate, key)
        default: throw ConfigurationError("gRPC over TLS needs both PARLEY_GRPC_TLS_CERT and PARLEY_GRPC_TLS_KEY")
        }
        c.allowedOrigins = Environment.list(allowedOrigins ?? env["PARLEY_ALLOWED_ORIGINS"])
        c.corsOrigins = Environment.list(corsOrigins ?? env["PARLEY_CORS_ORIGINS"]) ?? []
    }
}

extension Serve {
    func resolveWebhooks(_ c: inout ServerConfiguration, environment env: Environment) throws {
        let urls = Environment.list(webhookUrls ?? env["PARLEY_WEBHOOK_URLS"]) ?? []
        let hook = publishHookUrl ?? env["PARLEY_PUBLISH_HOOK_URL"]
        let secret = try env.required("PARLEY_WEBHOOK_SECRET", flag: webhookSecret)
        guard !urls.isEmpty || hook != nil else { return }
        guard let secret else { throw ConfigurationError("webhooks and the publish hook need PARLEY_WEBHOOK_SECRET (they are signed with it)") }
        for url in urls + (hook.map { [$0] } ?? []) where !(url.hasPrefix("http://") || url.hasPrefix("https://")) {
            throw ConfigurationError("a webhook URL must be http:// or https://, got '\(url)'")
        }
        if !urls.isEmpty {
            var webhooks = WebhookDispatcher.Configuration(urls: urls, secret: Array(secret.utf8))
            if let names = Environment.list(webhookEvents ?? env["PARLEY_WEBHOOK_EVENTS"]) {
                webhooks.kinds = Set(try names.map { name in
                    guard let kind = WebhookKind(rawValue: name.lowercased()) else {
                        throw ConfigurationError("PARLEY_WEBHOOK_EVENTS: unknown event '\(name)' (\(WebhookKind.allCases.map(\.rawValue).joined(separator: ", ")))")
                    }
                    return kind
                })
            }
            if let attempts = try webhookAttempts ?? env.int("PARLEY_WEBHOOK_ATTEMPTS") {
                guard attempts >= 1 else { throw ConfigurationError("PARLEY_WEBHOOK_ATTEMPTS must be at least 1") }
                webhooks.maxAttempts = attempts
            }
            if let ms = try webhookRetryMs ?? env.int("PARLEY_WEBHOOK_RETRY_MS") {
                guard ms >= 1 else { throw ConfigurationError("PARLEY_WEBHOOK_RETRY_MS must be at least 1") }
                webhooks.baseDelay = .milliseconds(ms)
            }
            c.webhooks = webhooks
        }
        if let hook {
            var gate = PublishHookConfiguration(url: hook, secret: Array(secret.utf8))
            if let ms = try publishHookTimeoutMs ?? env.int("PARLEY_PUBLISH_HOOK_TIMEOUT_MS") {
                guard ms >= 1 else { throw ConfigurationError("PARLEY_PUBLISH_HOOK_TIMEOUT_MS must be at least 1") }
                gate.timeout = .milliseconds(ms)
            }
            switch (publishHookFailure ?? env["PARLEY_PUBLISH_HOOK_FAILURE"])?.lowercased() {
            case nil, "closed": gate.failOpen = false
            case "open": gate.failOpen = true
            case let other?: throw ConfigurationError("PARLEY_PUBLISH_HOOK_FAILURE must be open or closed, got '\(other)'")
            }
            c.publishHook = gate
        }
    }

    func resolveCluster(_ c: inout ClusterConfiguration, environment env: Environment) throws {
        do {
            if let url = redis ?? env["PARLEY_REDIS_URL"] {
                c.redis = try RedisConfiguration(url: url)
            } else {
                c.redis = try RedisConfiguration(environment: env.values)
            }
            c.database = try (database ?? env["PARLEY_DATABASE_URL"]).map { try PostgresEndpoint(url: $0) }
        } catch {
            throw ConfigurationError("\(error)")
        }
        if let ca = redisCaFile ?? env["PARLEY_REDIS_CA_FILE"] {
            guard c.redis?.tls != nil else { throw ConfigurationError("PARLEY_REDIS_CA_FILE needs a rediss:// Redis URL") }
            c.redis?.tls?.rootCertificateFile = ca
        }
        if let ms = try instanceTtlMs ?? env.int("PARLEY_INSTANCE_TTL_MS") {
            guard ms >= 500 else { throw ConfigurationError("the instance TTL must be at least 500 ms") }
            c.instanceTTL = .milliseconds(ms)
        }
        if let seconds = try resyncInterval ?? env.double("PARLEY_RESYNC_INTERVAL") {
            guard seconds >= 0 else { throw ConfigurationError("the resync interval must be >= 0") }
            c.resyncInterval = seconds == 0 ? nil : .milliseconds(Int64(seconds * 1000))
        }
        c.instanceID = instanceId ?? env["PARLEY_INSTANCE_ID"] ?? c.instanceID
        c.advertiseURL = advertiseUrl ?? env["PARLEY_ADVERTISE_URL"] ?? c.advertiseURL
    }
}

/// Raises the soft open-files limit to the hard limit; returns the resulting soft limit.
func raiseOpenFilesLimit() -> Int {
    #if canImport(Glibc)
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return -1 }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        _ = getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }
    return Int(limit.rlim_cur)
    #else
    return -1
    #endif
}
