import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOPosix
import ParleyAuth
import ParleyCore
import ParleyGRPC
import ParleyPostgres
import ParleyRedis
import Prometheus
import ParleySQLite
import ServiceLifecycle
import UnixSignals

/// A built Parley server: backends, engine and transports, run as one service group.
///
/// The group shuts down in reverse order: first the engine drains (refuses new sessions, closes
/// every WebSocket with 1001 and ends every gRPC stream with UNAVAILABLE), then the gRPC and
/// HTTP servers stop, then the backends finish (the store commits what is queued).
public struct ParleyServer: Sendable {
    public let engine: Engine
    public let configuration: ServerConfiguration
    let services: [any Service]
    let logger: Logger

    /// Builds the server. `onListening` and `onGRPCListening` receive the bound HTTP and gRPC
    /// ports (useful with port 0). `store` replaces the one `configuration.storage` names (for
    /// embedding Parley, and for tests that inject faults).
    public static func build(
        _ configuration: ServerConfiguration,
        logger: Logger = Logger(label: "parley"),
        store: (any MessageStore)? = nil,
        onListening: @escaping @Sendable (Int) async -> Void = { _ in },
        onGRPCListening: @escaping @Sendable (Int) async -> Void = { _ in }
    ) async throws -> ParleyServer {
        try configuration.validate()
        let logger = {
            var logger = logger
            logger.logLevel = configuration.logLevel
            return logger
        }()
        let registry = PrometheusCollectorRegistry()
        let metrics = ParleyMetrics(factory: makeMetricsFactory(registry), version: ParleyServer.version)
        // Everything that can refuse the configuration comes before the store is opened: an
        // open SQLite store must be run (and so closed), never dropped.
        let authenticator = try await makeAuthenticator(configuration, logger: logger)
        let reflection = try ReflectionService(services: [
            "chat.v1.ChatService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
        ])
        let store = if let store { store } else { try await makeStore(configuration, metrics: metrics, logger: logger) }
        // In a cluster the PostgreSQL store keeps the files too (one pool, one service).
        let attachments: (any AttachmentStore)? = if let postgres = store as? PostgresStore {
            postgres
        } else {
            try await makeAttachmentStore(configuration, logger: logger)
        }
        // A store that keeps the files itself runs once, as the message store.
        let attachmentServices: [any Service] = if let attachments, !(attachments is PostgresStore) { [attachments] } else { [] }
        // Unique per run, even under a configured name: a restarted instance must not take over
        // the presence entries (and session ids) of its previous run, which the reaper removes.
        let runID = MessageID.next().suffix(8).lowercased()
        let instanceID = configuration.cluster.instanceID.map { "\($0)-\(runID.suffix(4))" } ?? runID
        let redis = configuration.cluster.redis.map { RedisBackends(configuration, redis: $0, instanceID: instanceID, logger: logger) }
        let broker: any Broker = redis?.broker ?? MemoryBroker()
        let presence: any PresenceStore = redis?.presence ?? MemoryPresenceStore()
        let push = configuration.push.map { push in
            PushNotifier(
                store: store, presence: presence, transport: HTTPPushTransport(), configuration: push,
                clock: configuration.clock ?? SystemClock(), metrics: metrics, logger: logger
            )
        }
        let clock = configuration.clock ?? SystemClock()
        let outbox = store as? any WebhookOutbox
        if configuration.webhooks != nil, outbox == nil { throw ParleyError(.internal, "this store keeps no webhook outbox") }
        let dispatcher = configuration.webhooks.flatMap { webhooks in
            outbox.map { outbox in
                WebhookDispatcher(
                    outbox: outbox, store: store, transport: HTTPWebhookTransport(), encoder: WebhookJSON.body, configuration: webhooks,
                    clock: clock, metrics: metrics, logger: logger
                )
            }
        }
        let webhooks = dispatcher.flatMap { dispatcher in
            outbox.map { Webhooks(outbox: $0, selection: dispatcher.configuration.selection, notify: { dispatcher.poke() }) }
        }
        let publishGate = configuration.publishHook.map {
            HTTPPublishGate(configuration: $0, transport: HTTPWebhookTransport(), clock: clock, metrics: metrics)
        }
        let engine = Engine(
            store: store, broker: broker, presence: presence, attachments: attachments, ice: configuration.ice, push: push,
            webhooks: webhooks, publishGate: publishGate,
            limits: configuration.limits, metrics: metrics, instanceID: instanceID, logger: logger, clock: configuration.clock ?? SystemClock()
        )
        let storageName: StaticString = configuration.cluster.database != nil ? "postgres" : configuration.storage == .sqlite ? "sqlite" : "memory"
        let backends = [BackendCheck(name: storageName) { await engine.storeIsReachable() }] + (redis.map { [$0.check] } ?? [])

        let router = Router(context: ParleyRequestContext.self)
        let origins = OriginPolicy(configuration.allowedOrigins, sameOriginByDefault: authenticator.isOpen)
        router.add(middleware: ConnectionCloseMiddleware())
        router.add(middleware: BrowserSafetyMiddleware(cors: OriginPolicy(configuration.corsOrigins), origins: origins))
        router.add(middleware: CORSPolicyMiddleware(configuration.corsOrigins))
        router.add(middleware: APIErrorMiddleware())
        router.add(middleware: FileMiddleware(
            configuration.publicDirectory ?? bundledPublicDirectory(),
            searchForIndexHtml: true, logger: logger
        ))
        let auth = RequestAuth(authenticator: authenticator)
        router.add(middleware: ErrorMetricsMiddleware(metrics: metrics))
        HealthRoutes(engine: engine, backends: backends).register(on: router)
        MetricsRoute(engine: engine, registry: registry, backends: backends).register(on: router)
        APIRoutes(engine: engine, auth: auth).register(on: router)
        AttachmentRoutes(engine: engine, auth: auth).register(on: router)
        PushRoutes(engine: engine, auth: auth).register(on: router)
        if let dispatcher, let outbox { WebhookRoutes(outbox: outbox, dispatcher: dispatcher, auth: auth).register(on: router) }
        SSERoutes(engine: engine, auth: auth, heartbeat: configuration.sseHeartbeat, clock: configuration.clock, logger: logger).register(on: router)
        let webSocketRoutes = WebSocketRoutes(
            engine: engine, authenticator: authenticator,
            settings: .init(
                limits: configuration.limits, handshakeTimeout: configuration.handshakeTimeout,
                refreshGrace: configuration.tokenRefreshGrace, pingInterval: configuration.pingInterval,
                clock: configuration.clock
            ),
            origins: origins, logger: logger
        )
        webSocketRoutes.register(on: router)
        let socketIOPeers = redis.map { RedisSocketIOPeers(client: $0.client, instanceID: instanceID, logger: logger) }
        let socketIORoutes = SocketIORoutes(
            server: SocketIOServer(
                engine: engine, authenticator: authenticator,
                settings: .init(
                    limits: configuration.limits, handshakeTimeout: configuration.handshakeTimeout,
                    refreshGrace: configuration.tokenRefreshGrace, pingInterval: configuration.pingInterval,
                    pingTimeout: configuration.socketIOPingTimeout, clock: configuration.clock
                ),
                peers: socketIOPeers, logger: logger
            ),
            origins: origins
        )
        socketIORoutes.register(on: router)

        let app = Application(
            router: router,
            server: httpServer(router: router, configuration: configuration, webSocket: webSocketRoutes, socketIO: socketIORoutes),
            configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "Parley"),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? configuration.port
                socketIOPeers?.advertise(configuration.cluster.advertiseURL ?? Self.defaultAdvertiseURL(host: configuration.host, port: port))
                logger.info("HTTP and WebSocket listening on http://\(configuration.host):\(port) (WebSocket at /ws)")
                await onListening(port)
            },
            logger: logger
        )
        let grpc = GRPCTransport(
            host: configuration.host, port: configuration.grpcPort,
            maxRequestBytes: configuration.limits.maxFrameBytes, idleTimeout: configuration.idleTimeout, tls: configuration.grpcTLS.map { GRPCTransport.TLSFiles(certificateChain: $0.certificateChain, privateKey: $0.privateKey) },
            services: [
                ChatService(
                    engine: engine, authenticator: authenticator,
                    settings: .init(
                        limits: configuration.limits, handshakeTimeout: configuration.handshakeTimeout,
                        refreshGrace: configuration.tokenRefreshGrace
                    ),
                    logger: logger, clock: configuration.clock ?? EventLoopClock(eventLoop: MultiThreadedEventLoopGroup.singleton.any())
                ),
                HealthService(engine: engine) {
                    for backend in backends where await !backend.isUp() { return false }
                    return true
                },
                reflection,
            ],
            logger: logger, onListening: onGRPCListening
        )
        // Shut down in reverse: the engine ends every session first (WebSocket 1001, gRPC
        // UNAVAILABLE), then the transports stop, then the backends.
        return ParleyServer(
            engine: engine, configuration: configuration,
            services: (redis?.services ?? []) + (socketIOPeers.map { [$0] } ?? []) + [
                store, broker, presence,
            ] + attachmentServices + (push.map { [$0] } ?? []) + (dispatcher.map { [$0] } ?? []) + [
                NamedService(name: "HTTP server on \(configuration.host):\(configuration.port)", app),
                grpc, EngineService(engine: engine),
            ],
            logger: logger
        )
    }

    /// How instances on one machine reach each other's HTTP port.
    static func defaultAdvertiseURL(host: String, port: Int) -> String {
        let address = ["0.0.0.0", "::", ""].contains(host) ? "127.0.0.1" : host.contains(":") ? "[\(host)]" : host
        return "http://\(address):\(port)"
    }

    /// HTTP/1 with the WebSocket upgrade, bounded in time at every stage: the first request
    /// head within the handshake timeout, a keep-alive connection between requests within the
    /// idle timeout, an upgraded WebSocket by its pings.
    private static func httpServer(
        router: Router<ParleyRequestContext>, configuration: ServerConfiguration, webSocket: WebSocketRoutes, socketIO: SocketIORoutes
    ) -> HTTPServerBuilder {
        let http1 = HTTP1Channel.Configuration(idleTimeout: .nanoseconds(Int64(configuration.idleTimeout.nanoseconds)))
        // A slow network may need a few seconds for a request head, whatever the WebSocket
        // handshake timeout (which tests set far lower).
        let headTimeout = TimeAmount.nanoseconds(Int64(max(configuration.handshakeTimeout, .seconds(5)).nanoseconds))
        return HTTPServerBuilder { responder in
            FirstRequestGuardChannel(
                base: ParleyHTTPChannel(responder: responder, http1: http1, webSocket: webSocket, socketIO: socketIO),
                timeout: headTimeout
            )
        }
    }

    /// API keys and JWT keys from the configuration; logs which mode the server runs in.
    private static func makeAuthenticator(_ configuration: ServerConfiguration, logger: Logger) async throws -> TokenAuthenticator {
        let authenticator = try await TokenAuthenticator.load(
            configuration.auth, limits: configuration.limits, clock: configuration.clock ?? SystemClock()
        )
        if authenticator.isOpen {
            logger.warning("open mode: no authentication is configured, anyone may claim any user id")
        } else {
            logger.info("JWT authentication (\(authenticator.algorithms.joined(separator: ", ")), leeway \(configuration.auth.leewaySeconds) s)")
        }
        if let secret = configuration.auth.jwtSecret, secret.utf8.count < 32 {
            logger.warning("PARLEY_JWT_SECRET is \(secret.utf8.count) bytes; RFC 7518 asks for at least 32 for HS256 (openssl rand -base64 48)")
        }
        if !configuration.auth.apiKeys.isEmpty {
            logger.info("\(configuration.auth.apiKeys.count) backend API key(s) configured")
        }
        if configuration.auth.apiKeys.contains(where: { $0.utf8.count < 16 }) {
            logger.warning("an API key is shorter than 16 characters; use long random keys (openssl rand -hex 32)")
        }
        return authenticator
    }

    /// The version reported by `parley_build_info`.
    public static let version = "0.1.0"

    /// Buckets suited to chat: sub-millisecond commits up to multi-second stalls.
    static func makeMetricsFactory(_ registry: PrometheusCollectorRegistry) -> DescribedMetricsFactory {
        var factory = DescribedMetricsFactory(registry: registry)
        let latency: [Duration] = [.microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5),
            .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
            .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10)]
        factory.durationBuckets[ParleyMetrics.deliveryLatencyLabel] = latency
        factory.durationBuckets[ParleyMetrics.appendLatencyLabel] = latency
        factory.valueBuckets[ParleyMetrics.batchSizeLabel] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
        return factory
    }

    private static func makeStore(_ configuration: ServerConfiguration, metrics: ParleyMetrics, logger: Logger) async throws -> any MessageStore {
        if let endpoint = configuration.cluster.database {
            return try await makePostgresStore(configuration, endpoint: endpoint, metrics: metrics, logger: logger)
        }
        switch configuration.storage {
        case .memory:
            logger.info("history in memory (not durable)")
            return MemoryMessageStore(idempotencyWindow: configuration.limits.idempotencyWindow)
        case .sqlite:
            try FileManager.default.createDirectory(atPath: configuration.dataDirectory, withIntermediateDirectories: true)
            let path = URL(fileURLWithPath: configuration.dataDirectory).appendingPathComponent("parley.sqlite").path
            var sqlite = SQLiteMessageStore.Configuration(path: path)
            sqlite.synchronous = configuration.synchronous == .full ? .full : .normal
            sqlite.idempotencyWindow = configuration.limits.idempotencyWindow
            sqlite.metricsFactory = metrics.factory
            logger.info("history in SQLite at \(path) (synchronous=\(sqlite.synchronous.rawValue))")
            return try await SQLiteMessageStore.open(sqlite, logger: logger)
        }
    }

    /// Files next to the SQLite history, in memory with the memory store.
    private static func makeAttachmentStore(_ configuration: ServerConfiguration, logger: Logger) async throws -> (any AttachmentStore)? {
        if configuration.cluster.database != nil { return nil }
        switch configuration.storage {
        case .memory:
            return MemoryAttachmentStore()
        case .sqlite:
            let directory = URL(fileURLWithPath: configuration.dataDirectory).appendingPathComponent("attachments").path
            return try await FileAttachmentStore.open(directory: directory, logger: logger)
        }
    }

    static func bundledPublicDirectory() -> String {
        Bundle.module.url(forResource: "Public", withExtension: nil)?.path ?? "Public"
    }

    /// Runs until a signal in `gracefulShutdownSignals` arrives or `group` is told to stop.
    public func makeServiceGroup(gracefulShutdownSignals: [UnixSignal] = [.sigterm, .sigint]) -> ServiceGroup {
        // A service that fails or ends early (an HTTP port already taken, say) shuts the whole
        // group down gracefully: the process must not live on half-started, serving gRPC but
        // no browser, nor stop answering SIGTERM. `run()` then rethrows the first error.
        ServiceGroup(configuration: .init(
            services: services.map {
                .init(service: $0, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup)
            },
            gracefulShutdownSignals: gracefulShutdownSignals,
            logger: logger
        ))
    }
}

/// Runs a service and names it in its error, so that the log says which one stopped the
/// process and why ("HTTP server on 0.0.0.0:8080: Address already in use").
struct NamedService: Service {
    let name: String
    let service: any Service

    init(name: String, _ service: any Service) {
        self.name = name
        self.service = service
    }

    func run() async throws {
        do {
            try await service.run()
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            throw ServiceFailure(service: name, underlying: error)
        }
    }
}

/// A service of the server failed; `description` names it and gives its cause.
public struct ServiceFailure: Error, CustomStringConvertible {
    public let service: String
    public let underlying: any Error
    public var description: String { "\(service): \(underlying)" }
}
