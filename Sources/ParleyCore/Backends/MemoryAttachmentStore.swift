import NIOCore
import ServiceLifecycle
import Synchronization

/// Attachments kept in memory: for tests and throwaway servers.
public final class MemoryAttachmentStore: AttachmentStore {
    private struct State {
        var attachments: [String: Attachment] = [:]
        var bytes: [String: ByteBuffer] = [:]

        /// Drops the bytes no attachment uses any more.
        mutating func collectGarbage() {
            let used = Set(attachments.values.map(\.digest))
            bytes = bytes.filter { used.contains($0.key) }
        }
    }

    private let state = Mutex(State())

    public init() {}

    public func run() async throws {
        try? await gracefulShutdown()
    }

    public func store(_ upload: UploadRequest, body: some AsyncSequence<ByteBuffer, any Error> & Sendable) async throws -> Attachment {
        var reader = UploadReader(upload)
        var collected = ByteBuffer()
        try await reader.read(body) { chunk in
            var chunk = chunk
            collected.writeBuffer(&chunk)
        }
        let attachment = reader.attachment()
        let bytes = collected
        state.withLock { state in
            state.attachments[attachment.id] = attachment
            state.bytes[attachment.digest] = bytes
        }
        return attachment
    }

    public func attachment(id: String) async throws -> Attachment? {
        state.withLock { $0.attachments[id] }
    }

    public func read(_ attachment: Attachment, range: Range<Int64>) -> ByteChunks {
        let bytes = state.withLock { $0.bytes[attachment.digest] }
        return ByteChunks(range: range) { offset, count in
            guard let bytes, let slice = bytes.getSlice(at: bytes.readerIndex + Int(offset), length: min(count, bytes.readableBytes - Int(offset)))
            else { throw ParleyError(.notFound, "the file is gone") }
            return slice
        }
    }

    public func attach(ids: [String], room: String, user: String, message: String, clientId: String?) async throws -> [Attachment] {
        try state.withLock { state throws(ParleyError) in
            let found = try ids.map { id throws(ParleyError) in
                try AttachmentRules.attach(state.attachments[id], id: id, room: room, user: user, message: message, clientId: clientId)
            }
            for attachment in found { state.attachments[attachment.id] = attachment }
            return found
        }
    }

    public func detach(message: String) async throws {
        state.withLock { state in
            for (id, attachment) in state.attachments where attachment.message == message {
                state.attachments[id]?.message = nil
                state.attachments[id]?.clientId = nil
            }
        }
    }

    public func deleteAttachments(of message: String) async throws {
        state.withLock { state in
            state.attachments = state.attachments.filter { $0.value.message != message }
            state.collectGarbage()
        }
    }

    public func deleteOrphans(uploadedBefore before: Timestamp) async throws -> Int {
        state.withLock { state in
            let count = state.attachments.count
            state.attachments = state.attachments.filter { $0.value.message != nil || $0.value.created >= before }
            state.collectGarbage()
            return count - state.attachments.count
        }
    }

    public func bytesUploaded(by user: String, since: Timestamp) async throws -> Int64 {
        state.withLock { state in
            state.attachments.values.filter { $0.user == user && $0.created >= since }.reduce(0) { $0 + $1.size }
        }
    }
}

/// The checks every store makes when attachments join a message.
public enum AttachmentRules {
    /// `attachment` (found by `id`) as attached to `message`: it must be the sender's, in the
    /// room, and free; one in a message sent with the same `clientId` is a retry, left as it is.
    public static func attach(
        _ attachment: Attachment?, id: String, room: String, user: String, message: String, clientId: String?
    ) throws(ParleyError) -> Attachment {
        guard var attachment, attachment.room == room, attachment.user == user else {
            throw ParleyError(.notFound, "no attachment '\(id)' of yours in room \(room)")
        }
        if attachment.message != nil {
            guard let clientId, attachment.clientId == clientId else {
                throw ParleyError.badRequest("attachment '\(id)' is in a message already")
            }
            return attachment
        }
        attachment.message = message
        attachment.clientId = clientId
        return attachment
    }
}
