import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

/// A command client that keeps one pipelined connection open while `run()` runs, reconnecting
/// with backoff and jitter and restoring AUTH and SELECT each time.
///
/// Guarantees: commands from one task are sent in call order; replies match their commands.
/// A command sent while there is no connection waits for one, up to the command timeout, and
/// then fails with `unavailable`. A command in flight when the connection drops fails with
/// `connectionClosed` and is not retried: it may or may not have run.
public actor RedisClient: Service {
    public nonisolated let configuration: RedisConfiguration
    nonisolated let eventLoop: any EventLoop
    private let logger: Logger
    private let onEvent: @Sendable (RedisConnectionEvent) -> Void
    private var connection: RedisConnection?
    private var waiters: [Int: CheckedContinuation<RedisConnection, any Error>] = [:]
    private var nextWaiterID = 0
    private var isRunning = false
    private var isShutDown = false
    private var hasConnected = false

    public nonisolated var unownedExecutor: UnownedSerialExecutor {
        eventLoop.executor.asUnownedSerialExecutor()
    }

    /// - Parameter onEvent: told of every connection change, on the client's event loop; keep it short.
    public init(
        configuration: RedisConfiguration,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = .redisSilent,
        onEvent: @escaping @Sendable (RedisConnectionEvent) -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.eventLoop = eventLoopGroup.next()
        self.logger = logger
        self.onEvent = onEvent
    }

    /// Connects and stays connected until the task is cancelled or a graceful shutdown starts;
    /// then fails waiting commands with `unavailable` and closes the connection.
    public func run() async {
        guard !isRunning, !isShutDown else { return }
        isRunning = true
        await cancelWhenGracefulShutdown { await self.maintainConnection() }
        isShutDown = true
        failWaiters(RedisError(.unavailable, "the Redis client is shut down"))
        await connection?.close()
        connection = nil
    }

    /// Pub/sub commands are refused: they belong on a `RedisSubscriber`'s dedicated connection.
    public func send(_ command: RESPCommand, timeout: Duration? = nil) async throws -> RESPToken {
        try Self.refusePubSub(command)
        return try await currentConnection(timeout: timeout).send(command, timeout: timeout)
    }

    public func send(_ name: String, _ arguments: any RESPArgument...) async throws -> RESPToken {
        try await send(RESPCommand(name, arguments: arguments))
    }

    /// See `RedisConnection.pipeline`: one flush, one result per command, in order.
    public func pipeline(_ commands: [RESPCommand], timeout: Duration? = nil) async throws -> [Result<RESPToken, RedisError>] {
        for command in commands { try Self.refusePubSub(command) }
        return try await currentConnection(timeout: timeout).pipeline(commands, timeout: timeout)
    }

    private func maintainConnection() async {
        await withReconnectingConnection(configuration: configuration, eventLoop: eventLoop, logger: logger) {
            connection in
            self.connection = connection
            let waiting = waiters
            waiters = [:]
            for waiter in waiting.values { waiter.resume(returning: connection) }
            onEvent(hasConnected ? .reconnected : .connected)
            hasConnected = true
        } disconnected: { connection, reason in
            if self.connection === connection { self.connection = nil }
            onEvent(.disconnected(reason))
        } connectFailed: { reason, delay in
            onEvent(.connectFailed(reason, retryIn: delay))
        }
    }

    /// The open connection, or the next one if it comes within `timeout` (default: the command timeout).
    private func currentConnection(timeout: Duration?) async throws -> RedisConnection {
        if let connection, connection.isActive { return connection }
        guard !isShutDown else { throw RedisError(.unavailable, "the Redis client is shut down") }
        let id = nextWaiterID
        nextWaiterID += 1
        let eventLoop = self.eventLoop
        let timer = (timeout ?? configuration.commandTimeout).map { timeout in
            eventLoop.scheduleTask(in: TimeAmount(timeout)) {
                self.assumeIsolated { $0.failWaiter(id, RedisError(.unavailable, "no Redis connection within \(timeout)")) }
            }
        }
        defer { timer?.cancel() }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                waiters[id] = continuation
            }
        } onCancel: {
            eventLoop.execute {
                self.assumeIsolated { $0.failWaiter(id, RedisError(.cancelled, "cancelled while waiting for a connection")) }
            }
        }
    }

    private static func refusePubSub(_ command: RESPCommand) throws {
        guard (try? RedisConnection.confirmations(for: command)) ?? 1 == 0 else {
            throw RedisError(.invalidConfiguration, "\(command.name) belongs on a RedisSubscriber")
        }
    }

    private func failWaiter(_ id: Int, _ error: RedisError) {
        waiters.removeValue(forKey: id)?.resume(throwing: error)
    }

    private func failWaiters(_ error: RedisError) {
        let waiting = waiters
        waiters = [:]
        for waiter in waiting.values { waiter.resume(throwing: error) }
    }
}
