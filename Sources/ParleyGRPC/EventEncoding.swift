import GRPCCore
import GRPCProtobuf
import NIOCore
import ParleyCore
import SwiftProtobuf

/// The gRPC wire format: room events, replies and errors as serialized `chat.v1.ChatEvent`
/// messages. The hub encodes each event once for this format and every gRPC stream of the
/// room shares the bytes.
final class ProtoEventEncoder: WireFormat {
    static let shared = ProtoEventEncoder()

    func encode(_ event: ServerEvent) -> ByteBuffer {
        encode(Chat_V1_ChatEvent(event))
    }

    /// An ack carries the command's `request_id`; a command without one gets no ack (a pong
    /// and errors always go out). `JoinChat` acks its join with an empty id.
    func encode(_ reply: Reply, id: RequestID?) -> ByteBuffer? {
        let requestID = id.map(Self.string) ?? ""
        let result: Chat_V1_Ack.OneOf_Result
        switch reply {
        case .pong:
            return encode(.pong(requestID))
        case .connected(let user, let session):
            result = .connect(.with {
                $0.userID = user
                $0.session = session
            })
        case .joined(let joined):
            result = .join(Chat_V1_JoinResult(joined))
        case .left(let room):
            result = .leave(.with { $0.roomID = room })
        case .published(let stored):
            result = .message(.with {
                $0.message = Chat_V1_ChatMessage(stored.message)
                $0.duplicate = stored.duplicate
            })
        case .changed(let message):
            result = .change(.with { $0.message = Chat_V1_ChatMessage(message) })
        case .callStarted(let start):
            result = .call(.with {
                $0.call = start.call
                $0.iceServers = start.iceServers.map(Chat_V1_IceServer.init)
            })
        case .signaled:
            result = .signal(.init())
        case .visibility(let visible):
            result = .visibility(.with { $0.visible = visible })
        case .typing(let room, let typing):
            result = .typing(.with {
                $0.roomID = room
                $0.typing = typing
            })
        case .read(let room, let seq):
            result = .read(.with {
                $0.roomID = room
                $0.seq = seq
            })
        case .history(let page):
            result = .history(Chat_V1_HistoryResponse(page))
        case .presence(let page):
            result = .presence(Chat_V1_PresenceResponse(page))
        case .searched(let page):
            result = .search(Chat_V1_HistoryResponse(page))
        case .inbox(let entries):
            result = .rooms(.with {
                $0.rooms = entries.map { entry in
                    .with {
                        $0.roomID = entry.room
                        $0.seq = entry.seq
                        $0.readSeq = entry.readSeq
                        $0.unread = Int64(entry.unread)
                        $0.mentions = Int64(entry.mentions)
                        if let last = entry.lastMessage { $0.lastMessage = Chat_V1_ChatMessage(last) }
                    }
                }
            })
        }
        guard id != nil else { return nil }
        return encode(.ack(requestID, result))
    }

    func encode(_ error: ParleyError, id: RequestID?) -> ByteBuffer {
        encode(.error(error, requestID: id.map(Self.string) ?? ""))
    }

    private static func string(_ id: RequestID) -> String {
        switch id {
        case .string(let string): string
        case .number(let number): String(number)
        }
    }

    /// A `ChatEvent` built for one stream.
    func encode(_ event: Chat_V1_ChatEvent) -> ByteBuffer {
        do {
            let bytes: [UInt8] = try event.serializedBytes()
            return ByteBuffer(bytes: bytes)
        } catch {
            // Serializing a message built in memory cannot fail (no required fields in proto3).
            preconditionFailure("ChatEvent serialization failed: \(error)")
        }
    }
}

/// Writes pre-encoded `ChatEvent` bytes as they are: the response serializer of the streaming
/// RPCs, so that an event encoded once is not re-encoded per stream.
struct EncodedEventSerializer: MessageSerializer {
    func serialize<Bytes: GRPCContiguousBytes>(_ message: ByteBuffer) throws -> Bytes {
        Bytes(message.readableBytesView)
    }
}

/// The protobuf deserializer of requests, with Parley's size limit: a request message over
/// `maxBytes` fails the call with RESOURCE_EXHAUSTED, as a WebSocket frame or HTTP body over
/// the limit is `too_large`.
struct LimitedDeserializer<Message: SwiftProtobuf.Message>: MessageDeserializer {
    let maxBytes: Int

    func deserialize<Bytes: GRPCContiguousBytes>(_ serializedMessageBytes: Bytes) throws -> Message {
        guard serializedMessageBytes.count <= maxBytes else {
            throw ParleyError(.tooLarge, "a request may be at most \(maxBytes) bytes").rpcError
        }
        do {
            return try GRPCProtobuf.ProtobufDeserializer<Message>().deserialize(serializedMessageBytes)
        } catch {
            throw ParleyError.badRequest("the request is not a valid \(Message.protoMessageName)").rpcError
        }
    }
}
