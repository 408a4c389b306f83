import Foundation
import GRPCCore
import GRPCProtobuf
import NIOCore
import ParleyCore
import SwiftProtobuf

extension Chat_V1_Attachment {
    init(_ attachment: ParleyCore.Attachment) {
        self.init()
        id = attachment.id
        roomID = attachment.room
        name = attachment.name
        type = attachment.type
        size = attachment.size
        if let width = attachment.width, let height = attachment.height {
            self.width = Int32(clamping: width)
            self.height = Int32(clamping: height)
        }
        if let duration = attachment.duration { durationMs = Int32(clamping: duration) }
        url = "/api/attachments/\(attachment.id)"
    }
}

extension ChatService {
    func registerAttachmentMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
        typealias Method = Chat_V1_ChatService.Method
        // A chunk carries up to 64 KiB of data plus its few fields.
        router.registerHandler(
            forMethod: Method.UploadAttachment.descriptor,
            deserializer: LimitedDeserializer<Chat_V1_UploadChunk>(maxBytes: ByteChunks.chunkSize + 1024),
            serializer: ProtobufSerializer<Chat_V1_Attachment>()
        ) { request, _ in
            do {
                return StreamingServerResponse(single: ServerResponse(message: try await upload(request)))
            } catch {
                return StreamingServerResponse(error: failure(error))
            }
        }
        router.registerHandler(
            forMethod: Method.DownloadAttachment.descriptor,
            deserializer: LimitedDeserializer<Chat_V1_DownloadRequest>(maxBytes: settings.limits.maxFrameBytes),
            serializer: ProtobufSerializer<Chat_V1_DownloadChunk>()
        ) { request, _ in
            do {
                let single = try await ServerRequest(stream: request)
                return try await download(single.message, metadata: single.metadata)
            } catch {
                return StreamingServerResponse(error: failure(error))
            }
        }
    }

    private func upload(_ request: StreamingServerRequest<Chat_V1_UploadChunk>) async throws -> Chat_V1_Attachment {
        var chunks = request.messages.makeAsyncIterator()
        guard let first = try await chunks.next() else { throw ParleyError.badRequest("an upload needs a first chunk naming its room") }
        let identity = try await self.identity(request.metadata, user: first.senderID)
        let body = UploadBody(first: ByteBuffer(bytes: first.data), rest: chunks)
        let attachment = try await engine.upload(
            identity, as: first.senderID.nonEmpty, room: first.roomID, name: first.name.isEmpty ? "file" : first.name,
            duration: first.hasDurationMs ? Int(first.durationMs) : nil, declaredLength: nil, body: body
        )
        return Chat_V1_Attachment(attachment)
    }

    private func download(_ request: Chat_V1_DownloadRequest, metadata: Metadata) async throws -> StreamingServerResponse<Chat_V1_DownloadChunk> {
        let attachment = try await engine.attachment(try await reader(metadata), id: request.attachmentID)
        guard let store = engine.attachments else { throw ParleyError(.notFound, "attachments are turned off") }
        let start = request.hasOffset ? request.offset : 0
        let end = request.hasLength ? start + request.length : attachment.size
        guard start >= 0, start <= end, end <= attachment.size else {
            throw ParleyError.badRequest("offset and length must lie within the file's \(attachment.size) bytes")
        }
        let chunks = store.read(attachment, range: start..<end)
        return StreamingServerResponse { writer in
            // The attachment first, then its bytes as they are read.
            try await writer.write(.with { $0.attachment = Chat_V1_Attachment(attachment) })
            for try await chunk in chunks {
                try await writer.write(.with { $0.data = Data(chunk.readableBytesView) })
            }
            return [:]
        }
    }
}

/// The data of an upload's chunks as one body, the first chunk (already read, for its room)
/// put back in front. Iterated once, by the task that handles the call.
struct UploadBody<Rest: AsyncIteratorProtocol>: AsyncSequence, @unchecked Sendable where Rest.Element == Chat_V1_UploadChunk {
    typealias Element = ByteBuffer
    let first: ByteBuffer
    let rest: Rest

    struct AsyncIterator: AsyncIteratorProtocol {
        var first: ByteBuffer?
        var rest: Rest

        mutating func next() async throws -> ByteBuffer? {
            if let chunk = first.take(), chunk.readableBytes > 0 { return chunk }
            guard let chunk = try await rest.next() else { return nil }
            return ByteBuffer(bytes: chunk.data)
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(first: first, rest: rest) }
}
