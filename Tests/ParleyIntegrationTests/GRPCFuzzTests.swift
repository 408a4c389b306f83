import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import ParleyGRPC
import SwiftProtobuf
import Testing

/// Request bytes as they are: lets the fuzzer send what no generated client would.
struct RawBytesSerializer: MessageSerializer {
    func serialize<Bytes: GRPCContiguousBytes>(_ message: [UInt8]) throws -> Bytes { Bytes(message) }
}

struct RawBytesDeserializer: MessageDeserializer {
    func deserialize<Bytes: GRPCContiguousBytes>(_ serializedMessageBytes: Bytes) throws -> [UInt8] {
        serializedMessageBytes.withUnsafeBytes { Array($0) }
    }
}

/// Mutated and random protobuf against every ChatService method of a live server: each call
/// must end with a spec'd status (never INTERNAL or UNKNOWN) in bounded time, the server must
/// keep serving, and the store must hold exactly the seeded messages plus those acked.
/// `PARLEY_FUZZ_ITERATIONS` and `PARLEY_FUZZ_SEED` apply here too.
@Suite("Fuzzing the gRPC service")
struct GRPCFuzzTests {
    static let allowed: Set<RPCError.Code> = [
        .invalidArgument, .unauthenticated, .permissionDenied, .notFound, .resourceExhausted, .unavailable,
    ]

    @Test("mutated and random requests on every method get a spec'd status; the store is unchanged")
    func fuzz() async throws {
        let environment = ProcessInfo.processInfo.environment
        let iterations = (environment["PARLEY_FUZZ_ITERATIONS"].flatMap { Int($0) } ?? 1200) / 2
        var mutator = Mutator(random: SeededRandom(seed: environment["PARLEY_FUZZ_SEED"].flatMap { UInt64($0) } ?? 0x6_7270_63))
        try await withServer({
            $0.limits.ratePerSecond = 0
            $0.limits.commandRatePerSecond = 0
        }) { server in
            try await withGRPCClient(
                transport: .http2NIOPosix(target: .ipv4(address: "127.0.0.1", port: server.grpcPort), transportSecurity: .plaintext)
            ) { grpc in
                let chat = Chat_V1_ChatService.Client(wrapping: grpc)
                for index in 1...3 {
                    _ = try await chat.sendMessage(.with { $0.roomID = "seeded"; $0.senderID = "seed"; $0.content = "m\(index)" })
                }
                typealias Method = Chat_V1_ChatService.Method
                let corpus: [(MethodDescriptor, [UInt8])] = try [
                    (Method.SendMessage.descriptor, Chat_V1_ChatMessage.with { $0.roomID = "fuzz"; $0.senderID = "f"; $0.content = "hello"; $0.clientID = "c" }.serializedBytes()),
                    (Method.GetHistory.descriptor, Chat_V1_HistoryRequest.with { $0.roomID = "seeded"; $0.beforeSeq = 3; $0.limit = 2 }.serializedBytes()),
                    (Method.GetPresence.descriptor, Chat_V1_PresenceRequest.with { $0.roomID = "seeded" }.serializedBytes()),
                    (Method.GetUser.descriptor, Chat_V1_GetUserRequest.with { $0.userID = "seed" }.serializedBytes()),
                ]
                var acked = 0
                var statuses: [String: Int] = [:]
                let started = ContinuousClock.now
                for iteration in 0..<iterations {
                    let (method, valid) = corpus[iteration % corpus.count]
                    let bytes = Self.fuzzBytes(valid, mutator: &mutator)
                    let call = ContinuousClock.now
                    do {
                        let answer = try await grpc.unary(
                            request: ClientRequest(message: bytes), descriptor: method,
                            serializer: RawBytesSerializer(), deserializer: RawBytesDeserializer(), options: .defaults
                        ) { try $0.message }
                        statuses["ok", default: 0] += 1
                        if method == Method.SendMessage.descriptor,
                            let ack = try? Chat_V1_MessageAck(serializedBytes: answer), !ack.duplicate
                        {
                            acked += 1
                        }
                    } catch let error as RPCError {
                        statuses["\(error.code)", default: 0] += 1
                        #expect(Self.allowed.contains(error.code), "\(method.method) \(bytes): \(error)")
                    }
                    #expect(ContinuousClock.now - call < .seconds(10), "\(method.method) took too long")
                }

                // Commands of a Chat stream: each bad one gets an error event or ends the stream
                // with INVALID_ARGUMENT; a fresh stream still works afterwards.
                var commands: [[UInt8]] = []
                for index in 0..<iterations / 4 {
                    let valid: [UInt8] = try Chat_V1_ChatCommand.with {
                        $0.requestID = "\(index)"
                        $0.command = index % 2 == 0 ? .join(.with { $0.roomID = "fuzz" }) : .ping(.init())
                    }.serializedBytes()
                    commands.append(Self.fuzzBytes(valid, mutator: &mutator))
                }
                let connect: [UInt8] = try Chat_V1_ChatCommand.with { $0.connect = .with { $0.user = "fuzzer" } }.serializedBytes()
                let ending: RPCError? = try await withThrowingTaskGroup(of: RPCError?.self) { [commands] group in
                    group.addTask {
                        do {
                            try await grpc.bidirectionalStreaming(
                                request: StreamingClientRequest(of: [UInt8].self, metadata: [:]) { writer in
                                    try await writer.write(connect)
                                    try await writer.write(contentsOf: commands)
                                },
                                descriptor: Method.Chat.descriptor, serializer: RawBytesSerializer(), deserializer: RawBytesDeserializer(),
                                options: .defaults
                            ) { response in
                                for try await _ in response.messages {}
                            }
                            return nil
                        } catch let error as RPCError {
                            return error
                        }
                    }
                    group.addTask {
                        try await Task.sleep(for: .seconds(5))
                        return nil
                    }
                    let first = try await group.next() ?? nil
                    group.cancelAll()
                    return first
                }
                if let ending { #expect(ending.code == .invalidArgument, "Chat ended with \(ending)") }
                print("gRPC fuzz: \(iterations) unary requests and \(commands.count) stream commands in \(ContinuousClock.now - started); statuses \(statuses.sorted { $0.key < $1.key })")

                // Still serving, and the store holds the seeds plus exactly what was acked.
                let seeded = try await chat.getHistory(.with { $0.roomID = "seeded" })
                #expect(seeded.messages.map(\.content) == ["m1", "m2", "m3"])
                let rooms = try await http("GET", server.url("/api/rooms"))
                let total = rooms.json["rooms"].array?.compactMap { $0["seq"].int }.reduce(0, +)
                #expect(total == 3 + acked)
            }
        }
    }

    /// A mutation of a valid message (bit flips, truncation, inserted varints, duplicated
    /// spans), or random bytes.
    static func fuzzBytes(_ valid: [UInt8], mutator: inout Mutator) -> [UInt8] {
        var random = mutator.random
        defer { mutator.random = random }
        if random.chance(0.15) {
            return (0..<Int.random(in: 0...64, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
        }
        var bytes = valid
        for _ in 0..<Int.random(in: 1...3, using: &random) {
            let position = bytes.isEmpty ? 0 : Int.random(in: 0..<bytes.count, using: &random)
            switch Int.random(in: 0..<6, using: &random) {
            case 0 where !bytes.isEmpty: bytes[position] ^= UInt8(1 << Int.random(in: 0..<8, using: &random))
            case 1: bytes = Array(bytes[..<position])
            case 2: bytes.insert(contentsOf: [0xff, 0xff, 0xff, 0xff, 0x0f], at: position)
            case 3 where !bytes.isEmpty:
                let end = min(bytes.count, position + Int.random(in: 1...16, using: &random))
                bytes.insert(contentsOf: bytes[position..<end], at: position)
            case 4: bytes.insert(contentsOf: [UInt8.random(in: 0...255, using: &random), UInt8.random(in: 0...255, using: &random)], at: position)
            default: bytes.insert(0, at: position)
            }
        }
        return bytes
    }
}
