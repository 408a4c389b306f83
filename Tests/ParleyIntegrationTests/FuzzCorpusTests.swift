import Foundation
import NIOCore
import ParleyCore
import ParleyRedis
@testable import ParleyServer
import Testing

/// Replays the libFuzzer corpora and crash reproducers (Fuzz/, `scripts/fuzz`) through the
/// same decoders with the same invariants, so that every input the fuzzers kept is a
/// regression test of the ordinary build.
@Suite("Fuzz corpus regression")
struct FuzzCorpusTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Fuzz").standardized

    static func inputs(_ target: String) -> [(name: String, bytes: [UInt8])] {
        ["Corpus", "Crashes"].flatMap { folder -> [(name: String, bytes: [UInt8])] in
            let directory = root.appendingPathComponent(folder).appendingPathComponent(target)
            let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
            return names.sorted().compactMap { name in
                (try? Data(contentsOf: directory.appendingPathComponent(name))).map { ("\(folder)/\(name)", Array($0)) }
            }
        }
    }

    @Test("client frames: a command or bad_request with a message")
    func commands() throws {
        let inputs = Self.inputs("FuzzCommands")
        #expect(inputs.count >= 10)
        for (name, bytes) in inputs {
            if case .failure(let failure) = ClientFrameDecoder().decode(String(decoding: bytes, as: UTF8.self)) {
                #expect(failure.error.code == .badRequest && !failure.error.message.isEmpty, "\(name)")
            }
        }
    }

    @Test("RESP: tokens or protocol_error, whole or in two pieces")
    func resp() throws {
        let inputs = Self.inputs("FuzzRESP")
        #expect(inputs.count >= 10)
        let limits = RESPLimits(maxDepth: 16, maxBulkLength: 1 << 16, maxAggregateCount: 1 << 12, maxLineLength: 1 << 12, maxBufferedBytes: 1 << 20)
        for (name, bytes) in inputs {
            for split in [bytes.count, bytes.count / 2] {
                var decoder = RESPDecoder(limits: limits)
                var buffer = ByteBuffer(bytes: bytes[0..<split])
                do {
                    while try decoder.decode(buffer: &buffer) != nil {}
                    buffer.writeBytes(bytes[split...])
                    while try decoder.decode(buffer: &buffer) != nil {}
                } catch let error as RedisError {
                    #expect(error.code == .protocolError, "\(name): \(error)")
                }
            }
        }
    }

    @Test("broker codec: an event or nil; a decoded event survives a round trip")
    func brokerCodec() throws {
        let inputs = Self.inputs("FuzzBrokerCodec")
        #expect(inputs.count >= 5)
        var decoded = 0
        for (name, bytes) in inputs {
            guard let event = BrokerCodec.decode(ByteBuffer(bytes: bytes)) else { continue }
            decoded += 1
            #expect(BrokerCodec.decode(BrokerCodec.encode(event)) == event, "\(name)")
        }
        #expect(decoded > 0)
    }

    @Test("query values: accepted within range or bad_request")
    func query() throws {
        let inputs = Self.inputs("FuzzQuery")
        #expect(inputs.count >= 5)
        for (name, bytes) in inputs {
            var values: [Substring: Substring] = [:]
            for pair in String(decoding: bytes, as: UTF8.self).split(separator: "&") {
                let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                values[parts[0]] = parts.count > 1 ? parts[1] : ""
            }
            do {
                let before = try Validation.seq(try QueryValues.int64(values["before"], name: "before"), field: "before")
                let after = try Validation.seq(try QueryValues.int64(values["after"], name: "after"), field: "after")
                let limit = try Validation.historyLimit(try QueryValues.int64(values["limit"], name: "limit").map { Int(clamping: $0) }, limits: Limits())
                if let range = HistoryQuery(before: before, after: after, limit: limit).seqRange {
                    #expect(range.after >= 0 && range.before - range.after > 1, "\(name)")
                }
            } catch {
                #expect(error.code == .badRequest, "\(name)")
            }
            do {
                if let since = try QueryValues.resumePoint(values["since"].map(String.init)) { #expect(since >= 0) }
            } catch {
                #expect(error.code == .badRequest, "\(name)")
            }
        }
    }
}
