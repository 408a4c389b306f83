import NIOCore
import Testing

@testable import ParleyRedis

@Suite("Replies a real Redis would not send", .timeLimit(.minutes(1)))
struct RedisFakeServerTests {
    @Test(arguments: [
        "%not-a-number\r\n",
        "$-3\r\n",
        "?garbage\r\n",
        ":12x\r\n",
        String(repeating: "*1\r\n", count: 10_000),
        "$99999999999\r\n",
    ])
    func malformedReplyIsACleanProtocolError(reply: String) async throws {
        let server = try await FakeRedisServer.start { _ in reply }
        let connection = try await RedisConnection.connect(configuration: server.configuration())
        let error = await #expect(throws: RedisError.self) { try await connection.send("PING") }
        #expect(error?.code == .protocolError)
        #expect(await connection.runUntilClosed().code == .protocolError)
        #expect(!connection.isActive)
        let after = await #expect(throws: RedisError.self) { try await connection.send("PING") }
        #expect(after?.code == .protocolError)
        await server.stop()
    }

    @Test func garbageDuringTheHandshakeFailsTheConnect() async throws {
        let server = try await FakeRedisServer.start { _ in "\u{1}\u{2}\u{3}\r\n" }
        let error = await #expect(throws: RedisError.self) {
            try await RedisConnection.connect(configuration: server.configuration(.resp3))
        }
        #expect(error?.code == .protocolError)
        await server.stop()
    }

    @Test func refusedHelloFallsBackToRESP2() async throws {
        let server = try await FakeRedisServer.start { command in
            switch command.first?.uppercased() {
            case "HELLO": "-ERR unknown command 'HELLO', with args beginning with: '3'\r\n"
            case "PING": "+PONG\r\n"
            default: "+OK\r\n"
            }
        }
        var configuration = server.configuration(.resp3)
        configuration.password = "pw"
        configuration.database = 4
        let connection = try await RedisConnection.connect(configuration: configuration)
        #expect(await connection.protocolVersion == .resp2)
        #expect(try await connection.send("PING").string == "PONG")
        #expect(server.receivedCommands == [["HELLO", "3", "AUTH", "default", "pw"], ["AUTH", "pw"], ["SELECT", "4"], ["PING"]])
        await connection.close()
        await server.stop()
    }

    @Test func aServerThatNeverAnswersTimesOut() async throws {
        let server = try await FakeRedisServer.start { _ in nil }
        var configuration = server.configuration()
        configuration.commandTimeout = .milliseconds(100)
        let connection = try await RedisConnection.connect(configuration: configuration)
        let error = await #expect(throws: RedisError.self) { try await connection.send("PING") }
        #expect(error?.code == .timeout)
        await connection.close()
        await server.stop()
    }
}
