import NIOCore
import Testing

@testable import ParleyRedis

@Suite("RESP decoder, byte by byte")
struct RESPDecoderTests {
    @Test func simpleStringErrorAndInteger() async throws {
        #expect(try await DecoderHarness.decode("+OK\r\n")?.value == .simpleString(ByteBuffer(string: "OK")))
        #expect(try await DecoderHarness.decode("-ERR bad\r\n")?.value == .simpleError(ByteBuffer(string: "ERR bad")))
        #expect(try await DecoderHarness.decode(":-42\r\n")?.value == .integer(-42))
        #expect(try await DecoderHarness.decode(":9223372036854775807\r\n")?.value == .integer(.max))
        #expect(try await DecoderHarness.decode(":-9223372036854775808\r\n")?.value == .integer(.min))
    }

    @Test func bulkStrings() async throws {
        #expect(try await DecoderHarness.decode("$5\r\nhello\r\n")?.value == .bulkString(ByteBuffer(string: "hello")))
        #expect(try await DecoderHarness.decode("$0\r\n\r\n")?.value == .bulkString(ByteBuffer()))
        #expect(try await DecoderHarness.decode("$-1\r\n")?.value == .null)
        // Binary-safe: CR LF inside the data is data.
        #expect(try await DecoderHarness.decode("$4\r\na\r\nb\r\n")?.string == "a\r\nb")
    }

    @Test func arrays() async throws {
        let token = try #require(try await DecoderHarness.decode("*3\r\n:1\r\n$1\r\nx\r\n*1\r\n+y\r\n"))
        #expect(token.description == "[1, \"x\", [+y]]")
        #expect(try await DecoderHarness.decode("*0\r\n")?.array?.isEmpty == true)
        #expect(try await DecoderHarness.decode("*-1\r\n")?.value == .null)
    }

    @Test func resp3Scalars() async throws {
        #expect(try await DecoderHarness.decode("_\r\n")?.value == .null)
        #expect(try await DecoderHarness.decode("#t\r\n")?.value == .boolean(true))
        #expect(try await DecoderHarness.decode("#f\r\n")?.value == .boolean(false))
        #expect(try await DecoderHarness.decode(",1.5\r\n")?.value == .double(1.5))
        #expect(try await DecoderHarness.decode(",-2e3\r\n")?.value == .double(-2000))
        #expect(try await DecoderHarness.decode(",inf\r\n")?.value == .double(.infinity))
        #expect(try await DecoderHarness.decode(",-inf\r\n")?.value == .double(-.infinity))
        guard case .double(let nan) = try await DecoderHarness.decode(",nan\r\n")?.value else {
            Issue.record("nan not decoded")
            return
        }
        #expect(nan.isNaN)
        let big = "3492890328409238509324850943850943825024385"
        #expect(try await DecoderHarness.decode("(\(big)\r\n")?.value == .bigNumber(ByteBuffer(string: big)))
        #expect(try await DecoderHarness.decode("!9\r\nSYNTAX no\r\n")?.errorMessage == "SYNTAX no")
        let verbatim = try await DecoderHarness.decode("=15\r\ntxt:Some string\r\n")
        #expect(verbatim?.value == .verbatimString(format: ByteBuffer(string: "txt"), text: ByteBuffer(string: "Some string")))
        #expect(verbatim?.string == "Some string")
    }

    @Test func resp3Aggregates() async throws {
        let map = try #require(try await DecoderHarness.decode("%2\r\n+a\r\n:1\r\n$1\r\nb\r\n:2\r\n"))
        #expect(map.description == "{+a: 1, \"b\": 2}")
        let set = try #require(try await DecoderHarness.decode("~2\r\n+x\r\n+y\r\n"))
        #expect(set.description == "~[+x, +y]")
        let push = try #require(try await DecoderHarness.decode(">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n"))
        #expect(push.description == ">[\"message\", \"c\", \"hi\"]")
    }

    @Test func attributeAnnotatesTheFollowingValue() async throws {
        let token = try #require(try await DecoderHarness.decode("|1\r\n+ttl\r\n:3600\r\n$3\r\nval\r\n"))
        #expect(token.value == .bulkString(ByteBuffer(string: "val")))
        let attributes = try #require(token.attributes)
        #expect(attributes.count == 1)
        #expect(attributes.map { "\($0.key)=\($0.value)" } == ["+ttl=3600"])
        // Inside an aggregate an attribute does not count as an element.
        let array = try #require(try await DecoderHarness.decode("*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n:2\r\n"))
        #expect(array.array?.map(\.value) == [.integer(1), .integer(2)])
    }

    @Test func everyPrefixOfAFrameIsIncomplete() async throws {
        let frame = "*2\r\n%1\r\n+k\r\n~1\r\n,2.5\r\n>2\r\n$3\r\nabc\r\n_\r\n"
        let (early, tokens) = try await DecoderHarness().feedByteByByte(frame)
        #expect(early == 0)
        #expect(tokens.count == 1)
        #expect(tokens.first?.description == "[{+k: ~[2.5]}, >[\"abc\", null]]")
    }

    @Test func pipelinedFramesInOneRead() async throws {
        let harness = try await DecoderHarness()
        try await harness.write(Array("+OK\r\n:1\r\n$1\r\na\r\n*1\r\n:2".utf8))
        #expect(try await harness.read()?.description == "+OK")
        #expect(try await harness.read()?.description == "1")
        #expect(try await harness.read()?.description == "\"a\"")
        #expect(try await harness.read() == nil)  // the array is still incomplete
        try await harness.write(Array("\r\n".utf8))
        #expect(try await harness.read()?.description == "[2]")
    }

    @Test(arguments: [
        ("?what\r\n", "invalid RESP type byte 0x3F"),
        ("$abc\r\nxyz\r\n", "invalid length"),
        ("$-5\r\n", "invalid negative length -5"),
        ("*-2\r\n", "invalid negative count -2"),
        ("%-1\r\n", "invalid negative count -1"),
        ("!-1\r\n", "invalid negative length -1"),
        (":12a\r\n", "invalid integer"),
        (":\r\n", "invalid integer"),
        (":99999999999999999999\r\n", "invalid integer"),
        ("#x\r\n", "invalid boolean"),
        (",abc\r\n", "invalid double"),
        ("(12x\r\n", "invalid big number"),
        ("_x\r\n", "invalid null"),
        ("$3\r\nabcde\r\n", "not followed by CRLF"),
        ("=3\r\ntxt\r\n", "verbatim string without a format prefix"),
        ("+OK\rX", "CR not followed by LF"),
        ("+O\nK\r\n", "LF without CR"),
    ])
    func malformedInputIsAProtocolError(input: String, message: String) async throws {
        let error = try #require(try await DecoderHarness.error(for: input))
        #expect(error.code == .protocolError)
        #expect(error.message.contains(message), "\(error.message)")
    }

    @Test func limits() async throws {
        let limits = RESPLimits(maxDepth: 3, maxBulkLength: 10, maxAggregateCount: 5, maxLineLength: 16)
        #expect(try await DecoderHarness.error(for: "*1\r\n*1\r\n*1\r\n:1\r\n", limits: limits) == nil)
        let deep = try await DecoderHarness.error(for: "*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", limits: limits)
        #expect(deep?.message.contains("nested deeper") == true)
        // The depth limit bites before the nested values arrive: a hostile server cannot make
        // the decoder recurse or wait.
        let attributes = try await DecoderHarness.error(for: String(repeating: "|0\r\n", count: 10), limits: limits)
        #expect(attributes?.message.contains("nested deeper") == true)
        let long = try await DecoderHarness.error(for: "$11\r\n", limits: limits)
        #expect(long?.message.contains("exceeds the limit of 10") == true)
        let many = try await DecoderHarness.error(for: "*6\r\n", limits: limits)
        #expect(many?.message.contains("exceeds the limit of 5") == true)
        let line = try await DecoderHarness.error(for: "+" + String(repeating: "a", count: 17), limits: limits)
        #expect(line?.message.contains("line longer") == true)
        let huge = try await DecoderHarness.error(for: "$999999999999\r\n")
        #expect(huge?.code == .protocolError)
    }

    @Test func bufferLimitStopsAnEndlessReply() async throws {
        let harness = try await DecoderHarness(limits: RESPLimits(maxBufferedBytes: 64))
        try await harness.write(Array("*1000\r\n".utf8))
        await #expect(throws: ByteToMessageDecoderError.PayloadTooLargeError.self) {
            for _ in 0..<100 { try await harness.write(Array(":1\r\n".utf8)) }
        }
    }

    @Test func consumingLeavesIncompleteInputUntouched() throws {
        var buffer = ByteBuffer(string: "$5\r\nhel")
        #expect(try RESPToken(consuming: &buffer) == nil)
        #expect(buffer.readableBytes == 7)
        buffer.writeString("lo\r\n+next")
        #expect(try RESPToken(consuming: &buffer)?.string == "hello")
        #expect(String(buffer: buffer) == "+next")
    }
}
