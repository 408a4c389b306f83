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
public actor RedisClient: Service, RedisConnectionOwner {
    public nonisolated let configuration: RedisConfiguration
    nonisolated let eventLoop: any EventLoop
    var kept: KeptConnection
    private var connection: RedisConnection? { kept.connection }
    private var isShutDown: Bool { kept.isShutDown }
    private var waiters: [Int: CheckedContinuation<RedisConnection, any Error>] = [:]
    private var nextWaiterID = 0

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
        self.kept = KeptConnection(logger: logger, onEvent: onEvent)
    }

    /// Connects and stays connected until the task is cancelled or a graceful shutdown starts;
    /// then fails waiting commands with `unavailable` and closes the connection.
    public func run() async {
        await keepConnected()
    }

    func prepare(_ connection: RedisConnection) async -> Bool {
        let waiting = waiters
        waiters = [:]
        for waiter in waiting.values { waiter.resume(returning: connection) }
        return true
    }

    func shutDown() {
        failWaiters(RedisError(.unavailable, "the Redis client is shut down"))
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
