import NIOCore
import NIOEmbedded

@testable import ParleyRedis

/// A `NIOAsyncTestingChannel` with just the RESP decoder, fed by the test.
struct DecoderHarness {
    let channel: NIOAsyncTestingChannel

    init(limits: RESPLimits = RESPLimits()) async throws {
        channel = try await NIOAsyncTestingChannel { channel in
            try channel.pipeline.syncOperations.addHandler(RESPDecoder.handler(limits: limits))
        }
    }

    func write(_ bytes: some Sequence<UInt8>) async throws {
        try await channel.writeInbound(ByteBuffer(bytes: Array(bytes)))
    }

    func read() async throws -> RESPToken? {
        try await channel.readInbound(as: RESPToken.self)
    }

    /// Feeds `frame` one byte at a time; returns how many tokens appeared before the last byte,
    /// and the tokens that appeared after it.
    func feedByteByByte(_ frame: String) async throws -> (early: Int, tokens: [RESPToken]) {
        let bytes = Array(frame.utf8)
        var early = 0
        for byte in bytes.dropLast() {
            try await write([byte])
            while try await read() != nil { early += 1 }
        }
        try await write(bytes.suffix(1))
        var tokens: [RESPToken] = []
        while let token = try await read() { tokens.append(token) }
        return (early, tokens)
    }

    /// Decodes one complete frame fed byte by byte.
    static func decode(_ frame: String) async throws -> RESPToken? {
        let harness = try await DecoderHarness()
        let (early, tokens) = try await harness.feedByteByByte(frame)
        guard early == 0, tokens.count == 1 else { return nil }
        return tokens[0]
    }

    /// Feeds `bytes` and returns the error the channel reported, if any.
    static func error(for bytes: String, limits: RESPLimits = RESPLimits()) async throws -> RedisError? {
        let harness = try await DecoderHarness(limits: limits)
        do {
            for byte in bytes.utf8 {
                try await harness.write([byte])
                while try await harness.read() != nil {}
            }
            return nil
        } catch let error as RedisError {
            return error
        }
    }
}
