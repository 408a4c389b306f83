import GRPCCore
import GRPCProtobuf
import NIOCore
import ParleyCore
import SwiftProtobuf

/// Encodes room events as serialized `chat.v1.ChatEvent` messages. The hub encodes each event
/// once for this encoder and every gRPC stream of the room shares the bytes.
final class ProtoEventEncoder: EventEncoder {
    static let shared = ProtoEventEncoder()

    func encode(_ event: ServerEvent) -> ByteBuffer {
        encode(Chat_V1_ChatEvent(event))
    }

    /// A reply for one stream (ack, error, pong).
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
