import Logging
import ParleyCore
import ParleyPostgres
import ParleyRedis
import ServiceLifecycle
import Synchronization

/// A backend whose health `/readyz`, `parley_backend_up` and gRPC health report.
///
/// Those probes need no credential, so a check's answer is kept for `maxAge` and checks never
/// overlap: however many probes arrive, the backend sees at most about one query per
/// `maxAge` (a store query, a Redis PING).
struct BackendCheck: Sendable {
    let name: StaticString
    let isUp: @Sendable () async -> Bool

    private final class Cache: Sendable {
        struct State {
            var last: (up: Bool, at: ContinuousClock.Instant)?
            /// The check under way; every caller meanwhile awaits it.
            var running: Task<Bool, Never>?
        }
        let state = Mutex(State())
    }

    /// A backend that does not answer within `timeout` counts as down: probes stay fast.
    init(
        name: StaticString, timeout: Duration = .seconds(1), maxAge: Duration = .seconds(1),
        isUp check: @escaping @Sendable () async -> Bool
    ) {
        self.name = name
        let cache = Cache()
        let timed: @Sendable () async -> Bool = {
            (try? await withTimeout(timeout) { await check() }) ?? false
        }
        self.isUp = {
            let now = ContinuousClock.now
            let task = cache.state.withLock { state -> Task<Bool, Never>? in
                if let last = state.last, now - last.at < maxAge { return nil }
                if let running = state.running { return running }
                let running = Task {
                    let up = await timed()
                    cache.state.withLock { $0 = .init(last: (up, .now), running: nil) }
                    return up
                }
                state.running = running
                return running
            }
            if let task { return await task.value }
            return cache.state.withLock { $0.last?.up ?? false }
        }
    }
}

/// Cluster mode's Redis side: one command client and one subscriber shared by the broker and
/// the presence store. The client and subscriber run as services before the others, so they
/// stop after them.
struct RedisBackends {
    let client: RedisClient
    let subscriber: RedisSubscriber
    let broker: RedisBroker
    let presence: RedisPresence

    init(_ configuration: ServerConfiguration, redis: RedisConfiguration, instanceID: String, logger: Logger) {
        let redisLogger = {
            var logger = logger
            logger[metadataKey: "backend"] = "redis"
            return logger
        }()
        client = RedisClient(configuration: redis, logger: redisLogger)
        subscriber = RedisSubscriber(configuration: redis, logger: redisLogger)
        var brokerConfiguration = RedisBroker.Configuration()
        brokerConfiguration.resyncInterval = configuration.cluster.resyncInterval
        broker = RedisBroker(client: client, subscriber: subscriber, configuration: brokerConfiguration, logger: redisLogger)
        var presenceConfiguration = RedisPresence.Configuration(instanceID: instanceID)
        presenceConfiguration.instanceTTL = configuration.cluster.instanceTTL
        presenceConfiguration.heartbeatInterval = max(.milliseconds(100), configuration.cluster.instanceTTL / 5)
        presence = RedisPresence(client: client, configuration: presenceConfiguration, logger: redisLogger)
        let broker = self.broker
        presence.onEvent { event in try await broker.publish(event) }
        logger.info("cluster mode: Redis at \(redis.host):\(redis.port), instance \(instanceID)")
    }

    var services: [any Service] { [client, subscriber] }

    var check: BackendCheck {
        let broker = self.broker
        return BackendCheck(name: "redis") { await broker.isReachable() }
    }
}

extension ParleyServer {
    static func makePostgresStore(_ configuration: ServerConfiguration, endpoint: PostgresEndpoint, metrics: ParleyMetrics, logger: Logger) async throws -> any MessageStore {
        var postgres = PostgresStore.Configuration(endpoint: endpoint)
        postgres.idempotencyWindow = configuration.limits.idempotencyWindow
        postgres.metricsFactory = metrics.factory
        var postgresLogger = logger
        postgresLogger[metadataKey: "backend"] = "postgres"
        logger.info("history in PostgreSQL at \(endpoint.redacted)")
        return try await PostgresStore.open(postgres, logger: postgresLogger)
    }
}
