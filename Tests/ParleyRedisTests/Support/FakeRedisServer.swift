import NIOCore
import NIOPosix
import Synchronization

@testable import ParleyRedis

/// A loopback server that answers each command with whatever `respond` returns (nothing for
/// nil): for replies a real Redis would never send.
final class FakeRedisServer: Sendable {
    let channel: any Channel
    private let log: CommandLog

    var port: Int { channel.localAddress?.port ?? 0 }
    var receivedCommands: [[String]] { log.commands.withLock { $0 } }

    private init(channel: any Channel, log: CommandLog) {
        self.channel = channel
        self.log = log
    }

    static func start(respond: @escaping @Sendable ([String]) -> String?) async throws -> FakeRedisServer {
        let log = CommandLog()
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(RESPDecoder()))
                    try channel.pipeline.syncOperations.addHandler(ScriptHandler(respond: respond, log: log))
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        return FakeRedisServer(channel: channel, log: log)
    }

    func configuration(_ version: RedisConfiguration.ProtocolVersion = .resp2) -> RedisConfiguration {
        var configuration = RedisConfiguration(host: "127.0.0.1", port: port)
        configuration.protocolVersion = version
        configuration.commandTimeout = .seconds(5)
        return configuration
    }

    func stop() async {
        try? await channel.close()
    }

    private final class CommandLog: Sendable {
        let commands = Mutex<[[String]]>([])
    }

    private final class ScriptHandler: ChannelInboundHandler {
        typealias InboundIn = RESPToken
        typealias OutboundOut = ByteBuffer
        let respond: @Sendable ([String]) -> String?
        let log: CommandLog

        init(respond: @escaping @Sendable ([String]) -> String?, log: CommandLog) {
            self.respond = respond
            self.log = log
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let command = (unwrapInboundIn(data).array ?? []).map { $0.string ?? "" }
            log.commands.withLock { $0.append(command) }
            guard let reply = respond(command) else { return }
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: reply)), promise: nil)
        }
    }
}
