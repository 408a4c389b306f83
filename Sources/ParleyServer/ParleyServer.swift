import Foundation
import Hummingbird
import HummingbirdWebSocket
import Logging
import NIOCore
import ParleyCore
import ParleyRedis
import Prometheus
import ParleySQLite
import ServiceLifecycle
import UnixSignals

/// A built Parley server: backends, engine and transports, run as one service group.
///
/// The group shuts down in reverse order: first the engine drains (refuses new sessions and
/// closes every WebSocket with 1001), then the HTTP server stops, then the backends finish
/// (the store commits what is queued).
public struct ParleyServer: Sendable {
    public let engine: Engine
    public let configuration: ServerConfiguration
    let services: [any Service]
    let logger: Logger

    /// Builds the server. `onListening` receives the bound HTTP port (useful with port 0).
    public static func build(
        _ configuration: ServerConfiguration,
        logger: Logger = Logger(label: "parley"),
        onListening: @escaping @Sendable (Int) async -> Void = { _ in }
    ) async throws -> ParleyServer {
        let logger = {
            var logger = logger
            logger.logLevel = configuration.logLevel
            return logger
        }()
        let registry = PrometheusCollectorRegistry()
        let metrics = ParleyMetrics(factory: makeMetricsFactory(registry), version: ParleyServer.version)
        let store = try await makeStore(configuration, metrics: metrics, logger: logger)
        let instanceID = configuration.cluster.instanceID ?? MessageID.next().suffix(8).lowercased()
        let redis = configuration.cluster.redis.map { RedisBackends(configuration, redis: $0, instanceID: instanceID, logger: logger) }
        let broker: any Broker = redis?.broker ?? MemoryBroker()
        let presence: any PresenceStore = redis?.presence ?? MemoryPresenceStore()
        let engine = Engine(
            store: store, broker: broker, presence: presence,
            limits: configuration.limits, metrics: metrics, instanceID: instanceID, logger: logger
        )
        let storageName: StaticString = configuration.cluster.database != nil ? "postgres" : configuration.storage == .sqlite ? "sqlite" : "memory"
        let backends = [BackendCheck(name: storageName) { await engine.storeIsReachable() }] + (redis.map { [$0.check] } ?? [])
        let authenticator = OpenAuthenticator(limits: configuration.limits)
        if authenticator.isOpen {
            logger.warning("open mode: no authentication is configured, anyone may claim any user id")
        }

        let router = Router(context: ParleyRequestContext.self)
        router.add(middleware: FileMiddleware(
            configuration.publicDirectory ?? bundledPublicDirectory(),
            searchForIndexHtml: true, logger: logger
        ))
        let auth = RequestAuth(authenticator: authenticator)
        router.add(middleware: ErrorMetricsMiddleware(metrics: metrics))
        HealthRoutes(engine: engine, backends: backends).register(on: router)
        MetricsRoute(engine: engine, registry: registry, backends: backends).register(on: router)
        APIRoutes(engine: engine, auth: auth).register(on: router)
        SSERoutes(engine: engine, auth: auth, heartbeat: configuration.sseHeartbeat, logger: logger).register(on: router)
        WebSocketRoutes(
            engine: engine, authenticator: authenticator,
            settings: .init(limits: configuration.limits, handshakeTimeout: configuration.handshakeTimeout),
            logger: logger
        ).register(on: router)

        let app = Application(
            router: router,
            server: .http1WebSocketUpgrade(
                webSocketRouter: router,
                configuration: .init(ws: WebSocketServerConfiguration(
                    maxFrameSize: configuration.limits.maxFrameBytes,
                    autoPing: .enabled(timePeriod: configuration.pingInterval),
                    closeTimeout: .seconds(5)
                ))
            ),
            configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "Parley"),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? configuration.port
                logger.info("HTTP and WebSocket listening on http://\(configuration.host):\(port) (WebSocket at /ws)")
                await onListening(port)
            },
            logger: logger
        )
        return ParleyServer(
            engine: engine, configuration: configuration,
            services: (redis?.services ?? []) + [store, broker, presence, app, EngineService(engine: engine)],
            logger: logger
        )
    }

    /// The version reported by `parley_build_info`.
    public static let version = "0.1.0"

    /// Buckets suited to chat: sub-millisecond commits up to multi-second stalls.
    static func makeMetricsFactory(_ registry: PrometheusCollectorRegistry) -> PrometheusMetricsFactory {
        var factory = PrometheusMetricsFactory(registry: registry)
        let latency: [Duration] = [.microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5),
            .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
            .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10)]
        factory.durationHistogramBuckets[ParleyMetrics.deliveryLatencyLabel] = latency
        factory.durationHistogramBuckets[ParleyMetrics.appendLatencyLabel] = latency
        factory.valueHistogramBuckets[ParleyMetrics.batchSizeLabel] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
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

    static func bundledPublicDirectory() -> String {
        Bundle.module.url(forResource: "Public", withExtension: nil)?.path ?? "Public"
    }

    /// Runs until a signal in `gracefulShutdownSignals` arrives or `group` is told to stop.
    public func makeServiceGroup(gracefulShutdownSignals: [UnixSignal] = [.sigterm, .sigint]) -> ServiceGroup {
        ServiceGroup(configuration: .init(
            services: services.map { .init(service: $0) },
            gracefulShutdownSignals: gracefulShutdownSignals,
            logger: logger
        ))
    }
}
