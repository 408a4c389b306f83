import NIOCore
import Testing

@testable import ParleyRedis

@Suite("RESP command encoding")
struct RESPCommandTests {
    @Test func encodesAnArrayOfBulkStrings() {
        let command = RESPCommand("SET", "key", ByteBuffer(string: "v\r\n"), "EX", 60)
        #expect(String(buffer: command.encoded) == "*5\r\n$3\r\nSET\r\n$3\r\nkey\r\n$3\r\nv\r\n\r\n$2\r\nEX\r\n$2\r\n60\r\n")
        #expect(command.count == 5)
    }

    @Test func encodesEmptyAndUnicodeArguments() {
        let command = RESPCommand("ECHO", arguments: ["", "héllo", [UInt8(0), 255]])
        #expect(Array(command.encoded.readableBytesView) == Array("*4\r\n$4\r\nECHO\r\n$0\r\n\r\n$6\r\nhéllo\r\n$2\r\n".utf8) + [0, 255, 13, 10])
    }

    @Test func decoderReadsWhatTheEncoderWrites() throws {
        var buffer = RESPCommand("HSET", "h", "f", 1.5, Int64(-7)).encoded
        let token = try #require(try RESPToken(consuming: &buffer))
        #expect(token.array?.compactMap(\.string) == ["HSET", "h", "f", "1.5", "-7"])
    }

    @Test func descriptionHidesArguments() {
        #expect(RESPCommand("AUTH", "secret").description == "AUTH (1 arguments)")
    }

    @Test func pubSubCommandsExpectOneConfirmationPerChannel() throws {
        #expect(try RedisConnection.confirmations(for: RESPCommand("SUBSCRIBE", "a", "b")) == 2)
        #expect(try RedisConnection.confirmations(for: RESPCommand("punsubscribe", "p*")) == 1)
        #expect(try RedisConnection.confirmations(for: RESPCommand("GET", "a")) == 0)
        #expect(throws: RedisError.self) { try RedisConnection.confirmations(for: RESPCommand("UNSUBSCRIBE")) }
    }

    @Test func theCommandClientRefusesPubSub() async {
        let client = RedisClient(configuration: RedisConfiguration())
        let error = await #expect(throws: RedisError.self) { try await client.send("SUBSCRIBE", "room") }
        #expect(error?.code == .invalidConfiguration)
    }
}
