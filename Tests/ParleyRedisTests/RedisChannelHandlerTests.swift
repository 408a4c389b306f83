import NIOCore
import NIOEmbedded
import Synchronization
import Testing

@testable import ParleyRedis

@Suite("Channel handler: ordering, timeouts, pub/sub frames")
struct RedisChannelHandlerTests {
    @Test func repliesMatchCommandsInOrder() async throws {
        let test = try await TestConnection()
        let first = Task { try await test.connection.send("GET", "a") }
        #expect(try await test.written() == "*2\r\n$3\r\nGET\r\n$1\r\na\r\n")
        let second = Task { try await test.connection.send("INCR", "n") }
        _ = try await test.written()
        try await test.reply("$1\r\n1\r\n:")
        try await test.reply("7\r\n")
        #expect(try await first.value.string == "1")
        #expect(try await second.value.int == 7)
    }

    @Test func serverErrorsThrowWithTheirPrefix() async throws {
        let test = try await TestConnection()
        let reply = Task { try await test.connection.send("LPUSH", "s", "x") }
        _ = try await test.written()
        try await test.reply("-WRONGTYPE Operation against a key holding the wrong kind of value\r\n")
        let error = await #expect(throws: RedisError.self) { try await reply.value }
        #expect(error?.code == .serverError)
        #expect(error?.serverErrorPrefix == "WRONGTYPE")
    }

    @Test func aTimedOutReplyIsDiscardedWhenItArrives() async throws {
        let test = try await TestConnection(commandTimeout: .seconds(1))
        let slow = Task { try await test.connection.send("GET", "slow") }
        _ = try await test.written()
        await test.channel.testingEventLoop.advanceTime(by: .seconds(2))
        let error = await #expect(throws: RedisError.self) { try await slow.value }
        #expect(error?.code == .timeout)

        let next = Task { try await test.connection.send("GET", "next") }
        _ = try await test.written()
        try await test.reply("$4\r\nlate\r\n$4\r\nnext\r\n")
        #expect(try await next.value.string == "next")
    }

    @Test func closingFailsEveryWaitingCommand() async throws {
        let test = try await TestConnection()
        let first = Task { try await test.connection.send("GET", "a") }
        let second = Task { try await test.connection.send("GET", "b") }
        _ = try await test.written()
        _ = try await test.written()
        try await test.channel.close()
        await #expect(throws: RedisError.self) { try await first.value }
        let error = await #expect(throws: RedisError.self) { try await second.value }
        #expect(error?.code == .connectionClosed)
        let after = await #expect(throws: RedisError.self) { try await test.connection.send("PING") }
        #expect(after?.code == .connectionClosed)
    }

    @Test func malformedReplyFailsWithProtocolErrorAndCloses() async throws {
        let test = try await TestConnection()
        let reply = Task { try await test.connection.send("PING") }
        _ = try await test.written()
        try? await test.reply("$-7\r\n")
        let error = await #expect(throws: RedisError.self) { try await reply.value }
        #expect(error?.code == .protocolError)
        #expect(await test.connection.runUntilClosed().code == .protocolError)
    }

    @Test func aReplyNobodyAskedForIsAProtocolError() async throws {
        let test = try await TestConnection()
        try? await test.reply("+surprise\r\n")
        #expect(await test.connection.runUntilClosed().code == .protocolError)
    }

    @Test(arguments: [false, true])
    func pubSubFramesReachTheMessageHandler(resp3: Bool) async throws {
        let test = try await TestConnection(resp3: resp3)
        let received = Mutex<[RedisMessage]>([])
        await test.connection.setMessageHandler { message in received.withLock { $0.append(message) } }
        let kind = resp3 ? ">" : "*"

        let subscribed = Task { try await test.connection.send("SUBSCRIBE", "a", "b") }
        #expect(try await test.written() == "*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$1\r\nb\r\n")
        try await test.reply("\(kind)3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n")
        try await test.reply("\(kind)3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n")
        #expect(try await subscribed.value.array?.last?.int == 2)

        try await test.reply("\(kind)3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\nhello\r\n")
        try await test.reply("\(kind)4\r\n$8\r\npmessage\r\n$2\r\nb*\r\n$1\r\nb\r\n$2\r\nhi\r\n")
        let messages = received.withLock { $0 }
        #expect(messages.map(\.channel) == ["a", "b"])
        #expect(messages.map(\.payloadString) == ["hello", "hi"])
        #expect(messages.map(\.pattern) == [nil, "b*"])
    }

    @Test func resp3PushesDoNotDisturbOrdinaryReplies() async throws {
        let test = try await TestConnection(resp3: true)
        let reply = Task { try await test.connection.send("LRANGE", "l", 0, -1) }
        _ = try await test.written()
        // An unrelated push (client-side caching) and an array that merely looks like a message.
        try await test.reply(">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n")
        try await test.reply("*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nb\r\n")
        #expect(try await reply.value.array?.compactMap(\.string) == ["message", "a", "b"])
    }
}
