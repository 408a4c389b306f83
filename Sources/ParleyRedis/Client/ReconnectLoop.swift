import Logging
import NIOCore

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
