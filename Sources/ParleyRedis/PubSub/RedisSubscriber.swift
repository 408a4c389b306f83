import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

/// Pub/sub on a dedicated connection that `run()` keeps open, reconnecting with backoff and
/// jitter and restoring AUTH, SELECT and every active subscription each time. Works with RESP2
/// (messages as arrays) and RESP3 (push frames).
///
/// Guarantees: messages of one channel reach each subscription in the order Redis published
/// them. Messages published while the connection is down are lost; each subscription then gets
/// `.reconnected` once it is live again, and the owner gets `RedisConnectionEvent.reconnected`.
public actor RedisSubscriber: Service, RedisConnectionOwner {
    public nonisolated let configuration: RedisConfiguration
    nonisolated let eventLoop: any EventLoop
    var kept: KeptConnection
    private var connection: RedisConnection? { kept.connection }
    private var isShutDown: Bool { kept.isShutDown }
    private var logger: Logger { kept.logger }
    private var registry = SubscriptionRegistry<SubscriptionBuffer>()
    private var nextID = 0

    public nonisolated var unownedExecutor: UnownedSerialExecutor {
        eventLoop.executor.asUnownedSerialExecutor()
    }

    /// - Parameter onEvent: told of every connection change, on the subscriber's event loop.
    public init(
        configuration: RedisConfiguration,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = .redisSilent,
        onEvent: @escaping @Sendable (RedisConnectionEvent) -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.eventLoop = eventLoopGroup.next()
        self.kept = KeptConnection(logger: logger, onEvent: onEvent)
    }

    /// Stays connected until the task is cancelled or a graceful shutdown starts; then ends
    /// every subscription's sequence and closes the connection.
    public func run() async {
        await keepConnected()
    }

    func shutDown() {
        for sink in registry.sinks { sink.finish() }
    }

    /// Subscribes to `channels` and `patterns` for the duration of `body`.
    ///
    /// When connected, `body` starts once the server confirmed the subscription, so anything
    /// published after that reaches it. While disconnected, `body` starts at once and the
    /// sequence begins with `.reconnected` when the subscription becomes live.
    /// Throws `serverError` if Redis refuses (for example an ACL denial).
    public func subscribe<Result>(
        channels: [String] = [],
        patterns: [String] = [],
        isolation: isolated (any Actor)? = #isolation,
        _ body: (RedisSubscription) async throws -> Result
    ) async throws -> Result {
        let subscription = try await register(channels: channels, patterns: patterns)
        do {
            let result = try await body(subscription)
            await unregister(subscription.id)
            return result
        } catch {
            await unregister(subscription.id)
            throw error
        }
    }

    /// How many local subscriptions are active.
    public var subscriptionCount: Int { registry.ids.count }

    private func register(channels: [String], patterns: [String]) async throws -> RedisSubscription {
        guard !isShutDown else { throw RedisError(.unavailable, "the Redis subscriber is shut down") }
        let channels = SubscriptionRegistry<SubscriptionBuffer>.unique(channels)
        let patterns = SubscriptionRegistry<SubscriptionBuffer>.unique(patterns)
        guard !channels.isEmpty || !patterns.isEmpty else {
            throw RedisError(.invalidConfiguration, "a subscription needs a channel or a pattern")
        }
        let id = nextID
        nextID += 1
        let buffer = SubscriptionBuffer(capacity: configuration.subscriptionBufferSize)
        registry.add(id: id, channels: channels, patterns: patterns, sink: buffer)
        if let connection {
            do {
                try await Self.subscribe(channels: channels, patterns: patterns, on: connection)
            } catch let error as RedisError where error.code == .serverError {
                await unregister(id)
                throw error
            } catch {
                // Lost connection or timeout: the next connection restores it and says `.reconnected`.
                logger.debug("subscription pending until reconnection", metadata: ["error": "\(error)"])
            }
        }
        return RedisSubscription(channels: channels, patterns: patterns, id: id, buffer: buffer)
    }

    private func unregister(_ id: Int) async {
        let (sink, channels, patterns) = registry.remove(id: id)
        sink?.finish()
        guard let connection, !channels.isEmpty || !patterns.isEmpty else { return }
        var commands: [RESPCommand] = []
        if !channels.isEmpty { commands.append(RESPCommand("UNSUBSCRIBE", arguments: channels)) }
        if !patterns.isEmpty { commands.append(RESPCommand("PUNSUBSCRIBE", arguments: patterns)) }
        _ = await connection.pipeline(commands)
    }

    private func route(_ message: RedisMessage) {
        for sink in registry.sinks(for: message) { sink.yield(.message(message)) }
    }

    /// Routes the connection's messages here, before any subscription is made on it.
    func attach(_ connection: RedisConnection) async {
        await connection.setMessageHandler { message in
            self.assumeIsolated { $0.route(message) }
        }
    }

    /// Restores every subscription on the new connection; subscriptions made from here on
    /// subscribe themselves on it.
    func prepare(_ connection: RedisConnection) async -> Bool {
        let restored = registry.ids
        do {
            try await Self.subscribe(channels: registry.channels, patterns: registry.patterns, on: connection)
        } catch {
            logger.warning("could not restore subscriptions", metadata: ["error": "\(error)"])
            await connection.close()
            return false
        }
        for id in restored { registry.sink(for: id)?.yield(.reconnected) }
        return true
    }

    /// Sends SUBSCRIBE and PSUBSCRIBE together and waits for every confirmation.
    private static func subscribe(channels: [String], patterns: [String], on connection: RedisConnection) async throws {
        var commands: [RESPCommand] = []
        if !channels.isEmpty { commands.append(RESPCommand("SUBSCRIBE", arguments: channels)) }
        if !patterns.isEmpty { commands.append(RESPCommand("PSUBSCRIBE", arguments: patterns)) }
        guard !commands.isEmpty else { return }
        for result in await connection.pipeline(commands) { _ = try result.get() }
    }
}
