import Logging
import NIOCore
import ServiceLifecycle

/// Keeps one connection open until the task is cancelled: connect, hand the connection to
/// `connected`, wait until it closes, report why to `disconnected`, wait a backoff delay with
/// jitter, and start again. The delay restarts from the first step after a successful connection.
func withReconnectingConnection(
    configuration: RedisConfiguration,
    eventLoop: any EventLoop,
    logger: Logger,
    isolation: isolated (any Actor)? = #isolation,
    connected: (RedisConnection) async -> Void,
    disconnected: (RedisConnection, RedisError) -> Void,
    connectFailed: (RedisError, Duration) -> Void
) async {
    var attempt = 0
    while !Task.isCancelled {
        do {
            let connection = try await RedisConnection.connect(
                configuration: configuration,
                eventLoop: eventLoop,
                logger: logger
            )
            attempt = 0
            await connected(connection)
            let reason = await connection.runUntilClosed()
            if !Task.isCancelled { logger.info("Redis connection lost", metadata: ["reason": "\(reason)"]) }
            disconnected(connection, reason)
        } catch {
            guard !Task.isCancelled else { break }
            let reason = error as? RedisError ?? RedisError(.connectionFailed, "\(error)")
            let delay = configuration.reconnect.delay(forAttempt: attempt)
            logger.info("Redis connection failed", metadata: ["reason": "\(reason)", "retry_in": "\(delay)"])
            connectFailed(reason, delay)
            attempt += 1
            try? await Task.sleep(for: delay)
            continue
        }
        guard !Task.isCancelled else { break }
        try? await Task.sleep(for: configuration.reconnect.delay(forAttempt: attempt))
        attempt += 1
    }
}

/// What an owner of one kept-open Redis connection tracks (`RedisClient`, `RedisSubscriber`).
struct KeptConnection {
    let logger: Logger
    /// Told of every connection change, on the owner's event loop.
    let onEvent: @Sendable (RedisConnectionEvent) -> Void
    var connection: RedisConnection?
    var isRunning = false
    var isShutDown = false
    var hasConnected = false
}

/// An actor that keeps one Redis connection open while its `run()` runs: the reconnect loop,
/// the connection events and the shutdown, written once for the command client and the
/// subscriber. The owner adds what a fresh connection needs (`prepare`) and what shutting down
/// ends (`shutDown`).
protocol RedisConnectionOwner: Actor {
    nonisolated var configuration: RedisConfiguration { get }
    nonisolated var eventLoop: any EventLoop { get }
    var kept: KeptConnection { get set }
    /// Sets a new connection up before anyone else may use it (it is not in `kept` yet).
    func attach(_ connection: RedisConnection) async
    /// Readies a new connection, now in `kept.connection`; false when it had to be closed.
    func prepare(_ connection: RedisConnection) async -> Bool
    /// The owner is shutting down: fail or end what waits on it.
    func shutDown()
}

extension RedisConnectionOwner {
    func attach(_ connection: RedisConnection) async {}

    /// Connects and stays connected until the task is cancelled or a graceful shutdown
    /// starts; then shuts down and closes the connection. Runs once.
    func keepConnected() async {
        guard !kept.isRunning, !kept.isShutDown else { return }
        kept.isRunning = true
        await cancelWhenGracefulShutdown { await self.maintainConnection() }
        kept.isShutDown = true
        shutDown()
        await kept.connection?.close()
        kept.connection = nil
    }

    private func maintainConnection() async {
        await withReconnectingConnection(configuration: configuration, eventLoop: eventLoop, logger: kept.logger) { connection in
            await self.attach(connection)
            self.kept.connection = connection
            guard await self.prepare(connection) else { return }
            self.kept.onEvent(self.kept.hasConnected ? .reconnected : .connected)
            self.kept.hasConnected = true
        } disconnected: { connection, reason in
            if self.kept.connection === connection { self.kept.connection = nil }
            self.kept.onEvent(.disconnected(reason))
        } connectFailed: { reason, delay in
            self.kept.onEvent(.connectFailed(reason, retryIn: delay))
        }
    }
}
