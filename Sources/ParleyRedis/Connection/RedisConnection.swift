import Logging
import NIOCore
import NIOSSL
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// One connection to Redis. Commands are pipelined: any number may be in flight, and replies are
/// matched to them in order. Each command has a timeout; a server error reply throws a
/// `serverError`. A connection does not reconnect: `RedisClient` and `RedisSubscriber` do.
///
/// The actor runs on its channel's event loop, so its calls reach the channel without a hop.
public actor RedisConnection {
    nonisolated let channel: any Channel
    let handler: NIOLoopBound<RedisChannelHandler>
    public nonisolated let configuration: RedisConfiguration
    let logger: Logger
    /// The protocol the handshake settled on.
    public internal(set) var protocolVersion: RedisConfiguration.ProtocolVersion = .resp2

    public nonisolated var unownedExecutor: UnownedSerialExecutor {
        channel.eventLoop.executor.asUnownedSerialExecutor()
    }

    init(
        channel: any Channel,
        handler: NIOLoopBound<RedisChannelHandler>,
        configuration: RedisConfiguration,
        logger: Logger
    ) {
        self.channel = channel
        self.handler = handler
        self.configuration = configuration
        self.logger = logger
    }

    /// Connects, then runs the handshake: HELLO 3 (with AUTH) or AUTH, then SELECT.
    public static func connect(
        configuration: RedisConfiguration,
        eventLoop: any EventLoop = MultiThreadedEventLoopGroup.singleton.next(),
        logger: Logger = .redisSilent
    ) async throws -> RedisConnection {
        let limits = configuration.limits
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(TimeAmount(configuration.connectTimeout))
            .channelOption(ChannelOptions.socketOption(.so_keepalive), value: 1)
        let channel: any Channel
        let handler: NIOLoopBound<RedisChannelHandler>
        // TLS that cannot be set up is an error, never a quiet fall back to plaintext.
        let tls: NIOSSLContext?
        do {
            tls = try configuration.tls.map { try NIOSSLContext(configuration: $0.clientConfiguration) }
        } catch {
            throw RedisError(.invalidConfiguration, "cannot set up TLS for Redis: \(error)")
        }
        // SNI and the name check take a host name; an IP address is checked against the certificate's IP entries.
        let serverHostname = configuration.host.isIPAddress ? nil : configuration.host
        do {
            (channel, handler) = try await bootstrap.connect(host: configuration.host, port: configuration.port) {
                channel in
                channel.eventLoop.makeCompletedFuture {
                    let handler = RedisChannelHandler(logger: logger)
                    let sync = channel.pipeline.syncOperations
                    if let tls { try sync.addHandler(try NIOSSLClientHandler(context: tls, serverHostname: serverHostname)) }
                    try sync.addHandler(RESPDecoder.handler(limits: limits))
                    try sync.addHandler(handler)
                    return (channel, NIOLoopBound(handler, eventLoop: channel.eventLoop))
                }
            }
        } catch {
            throw RedisError(
                .connectionFailed,
                "cannot connect to \(configuration.host):\(configuration.port): \(error)"
            )
        }
        let connection = RedisConnection(
            channel: channel,
            handler: handler,
            configuration: configuration,
            logger: logger
        )
        do {
            try await connection.handshake()
        } catch {
            await connection.close()
            throw error
        }
        return connection
    }

    /// Sends one command and waits for its reply. `timeout` overrides the configured one.
    /// (P|S)(UN)SUBSCRIBE must name their channels; their reply is the last confirmation.
    public func send(_ command: RESPCommand, timeout: Duration? = nil) async throws -> RESPToken {
        let promise = channel.eventLoop.makePromise(of: RESPToken.self)
        let id = handler.value.enqueue(
            command,
            confirmations: try Self.confirmations(for: command),
            promise: promise,
            timeout: (timeout ?? configuration.commandTimeout).map(TimeAmount.init)
        )
        let handler = self.handler
        let eventLoop = channel.eventLoop
        return try await withTaskCancellationHandler {
            try await promise.futureResult.get()
        } onCancel: {
            eventLoop.execute { handler.value.abandon(id, with: RedisError(.cancelled, "command cancelled")) }
        }
    }

    /// `send(RESPCommand(name, arguments...))`.
    public func send(_ name: String, _ arguments: any RESPArgument...) async throws -> RESPToken {
        try await send(RESPCommand(name, arguments: arguments))
    }

    /// Writes every command with a single flush, then waits for all replies: one result per
    /// command, in order. Each command has its own timeout; a failed one does not stop the others.
    public func pipeline(_ commands: [RESPCommand], timeout: Duration? = nil) async -> [Result<RESPToken, RedisError>] {
        let handler = self.handler.value
        let timeAmount = (timeout ?? configuration.commandTimeout).map(TimeAmount.init)
        var futures: [EventLoopFuture<RESPToken>] = []
        futures.reserveCapacity(commands.count)
        for command in commands {
            let promise = channel.eventLoop.makePromise(of: RESPToken.self)
            do {
                let confirmations = try Self.confirmations(for: command)
                handler.enqueue(command, confirmations: confirmations, promise: promise, timeout: timeAmount, flush: false)
            } catch {
                promise.fail(error)
            }
            futures.append(promise.futureResult)
        }
        handler.flush()
        var results: [Result<RESPToken, RedisError>] = []
        results.reserveCapacity(futures.count)
        for future in futures {
            do {
                results.append(.success(try await future.get()))
            } catch {
                results.append(.failure(error as? RedisError ?? RedisError(.connectionClosed, "\(error)")))
            }
        }
        return results
    }

    /// Sets who receives pub/sub messages: called on the event loop, in arrival order, and never
    /// after the connection closed.
    public func setMessageHandler(_ receiver: @escaping @Sendable (RedisMessage) -> Void) {
        handler.value.onMessage = receiver
    }

    /// Fails every waiting command with `connectionClosed` and closes the connection.
    public func close() async {
        handler.value.close(reason: .connectionClosed("connection closed by the client"))
        try? await channel.closeFuture.get()
    }

    /// Waits until the connection closes and returns why. Cancelling the wait closes it.
    public func runUntilClosed() async -> RedisError {
        let channel = self.channel
        await withTaskCancellationHandler {
            try? await channel.closeFuture.get()
        } onCancel: {
            channel.close(promise: nil)
        }
        return handler.value.closeReason ?? .connectionClosed()
    }

    public nonisolated var isActive: Bool { channel.isActive }

    /// How many confirmations a pub/sub command expects: one per named channel.
    static func confirmations(for command: RESPCommand) throws -> Int {
        guard (9...12).contains(command.name.utf8.count) else { return 0 }
        switch command.name.uppercased() {
        case "SUBSCRIBE", "UNSUBSCRIBE", "PSUBSCRIBE", "PUNSUBSCRIBE", "SSUBSCRIBE", "SUNSUBSCRIBE":
            guard command.count > 1 else {
                throw RedisError(.invalidConfiguration, "\(command.name) must name at least one channel")
            }
            return command.count - 1
        default:
            return 0
        }
    }
}

extension RedisConfiguration.TLS {
    var clientConfiguration: TLSConfiguration {
        var configuration = TLSConfiguration.makeClientConfiguration()
        if let rootCertificateFile { configuration.trustRoots = .file(rootCertificateFile) }
        return configuration
    }
}

extension String {
    /// An IPv4 or IPv6 literal, which TLS checks against the certificate's IP entries.
    var isIPAddress: Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, self, &v4) == 1 || inet_pton(AF_INET6, self, &v6) == 1
    }
}
