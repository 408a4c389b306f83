import Logging
import NIOCore
import NIOEmbedded

@testable import ParleyRedis

/// A `RedisConnection` over a `NIOAsyncTestingChannel`: the test reads what the connection
/// writes and writes the server's bytes itself.
struct TestConnection {
    let channel: NIOAsyncTestingChannel
    let connection: RedisConnection

    init(resp3: Bool = false, commandTimeout: Duration? = .seconds(5)) async throws {
        let channel = NIOAsyncTestingChannel()
        let handler = try await channel.testingEventLoop.executeInContext {
            let handler = RedisChannelHandler(logger: .redisSilent)
            handler.isRESP3 = resp3
            try channel.pipeline.syncOperations.addHandler(RESPDecoder.handler())
            try channel.pipeline.syncOperations.addHandler(handler)
            return NIOLoopBound(handler, eventLoop: channel.eventLoop)
        }
        try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 6379))
        var configuration = RedisConfiguration()
        configuration.commandTimeout = commandTimeout
        self.channel = channel
        self.connection = RedisConnection(
            channel: channel,
            handler: handler,
            configuration: configuration,
            logger: .redisSilent
        )
    }

    /// The next bytes the connection wrote, as text.
    func written() async throws -> String {
        String(buffer: try await channel.waitForOutboundWrite(as: ByteBuffer.self))
    }

    func reply(_ text: String) async throws {
        try await channel.writeInbound(ByteBuffer(string: text))
    }
}
