import Crypto
import NIOCore
import ServiceLifecycle

/// Where attachments' bytes and metadata live: files under the data directory in the embedded
/// server, PostgreSQL in a cluster. The shared behavioural suite checks every implementation.
///
/// Guarantees:
/// - `store` reads the body as it arrives (never all of it in memory), refuses it with
///   `too_large` past `maxBytes`, and makes the attachment visible only once every byte is
///   durably stored: an upload cut off half way (or a crash) leaves nothing that is served.
/// - The type is decided from the leading bytes (`ContentSniffer`), not from the name.
/// - Equal bytes are kept once (content addressing by SHA-256); deleting one attachment keeps
///   the bytes while another attachment still uses them.
public protocol AttachmentStore: Service {
    func store(_ upload: UploadRequest, body: some AsyncSequence<ByteBuffer, any Error> & Sendable) async throws -> Attachment
    func attachment(id: String) async throws -> Attachment?
    /// The bytes in `range` of a stored attachment, read chunk by chunk as they are consumed.
    func read(_ attachment: Attachment, range: Range<Int64>) -> ByteChunks
    /// Marks `ids` as part of `message` (sent with `clientId`). Fails with `not_found` when one
    /// is unknown, of another room or uploader, or with `bad_request` when it is in another
    /// message already; one in a message sent with the same `clientId` is a retry and is
    /// returned as it is.
    func attach(ids: [String], room: String, user: String, message: String, clientId: String?) async throws -> [Attachment]
    /// Undoes `attach` for `message`, a message that could not be stored.
    func detach(message: String) async throws
    /// Deletes the attachments of `message` (a deleted message).
    func deleteAttachments(of message: String) async throws
    /// Deletes the attachments uploaded before `before` and never attached; returns how many.
    func deleteOrphans(uploadedBefore before: Timestamp) async throws -> Int
    /// Bytes `user` uploaded since `since` (for the daily quota).
    func bytesUploaded(by user: String, since: Timestamp) async throws -> Int64
}

extension AttachmentStore {
    /// What a room's attachment ids in a new message resolve to, checked and attached.
    public func attachForPublish(ids: [String], room: String, user: String, message: String, clientId: String?) async throws -> [Attachment] {
        guard !ids.isEmpty else { return [] }
        guard ids.count <= 10 else { throw ParleyError.badRequest("a message carries at most 10 attachments") }
        guard Set(ids).count == ids.count else { throw ParleyError.badRequest("attachments: an id is given twice") }
        return try await attach(ids: ids, room: room, user: user, message: message, clientId: clientId)
    }
}


/// A stored file's bytes in a range, read one chunk at a time when the consumer asks for it:
/// a slow download holds one chunk in memory, not the file.
public struct ByteChunks: AsyncSequence, Sendable {
    public typealias Element = ByteBuffer
    public static let chunkSize = 64 * 1024

    let range: Range<Int64>
    /// Reads at most `count` bytes at `offset`; fewer only at the end of the file.
    let readChunk: @Sendable (_ offset: Int64, _ count: Int) async throws -> ByteBuffer

    public init(range: Range<Int64>, readChunk: @escaping @Sendable (_ offset: Int64, _ count: Int) async throws -> ByteBuffer) {
        self.range = range
        self.readChunk = readChunk
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        var offset: Int64
        let end: Int64
        let readChunk: @Sendable (Int64, Int) async throws -> ByteBuffer

        public mutating func next() async throws -> ByteBuffer? {
            guard offset < end else { return nil }
            let chunk = try await readChunk(offset, Int(Swift.min(Int64(ByteChunks.chunkSize), end - offset)))
            guard chunk.readableBytes > 0 else { throw ParleyError(.internal, "the file is shorter than its size") }
            offset += Int64(chunk.readableBytes)
            return chunk
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(offset: range.lowerBound, end: range.upperBound, readChunk: readChunk)
    }
}

/// Reads an upload's body once, as it arrives: counts it against the limit, hashes it, keeps
/// its leading bytes for `ContentSniffer`, and hands each chunk to the store's `write`.
public struct UploadReader {
    public private(set) var size: Int64 = 0
    private var hash = SHA256()
    private var prefix: [UInt8] = []
    let upload: UploadRequest

    public init(_ upload: UploadRequest) {
        self.upload = upload
    }

    /// Reads `body` to its end; `write` stores each chunk. Throws `too_large` past the limit.
    public mutating func read(
        _ body: some AsyncSequence<ByteBuffer, any Error>, write: (ByteBuffer) async throws -> Void
    ) async throws {
        for try await chunk in body {
            size += Int64(chunk.readableBytes)
            guard size <= upload.maxBytes else {
                throw ParleyError(.tooLarge, "the file is larger than \(upload.maxBytes) bytes")
            }
            chunk.withUnsafeReadableBytes { bytes in
                hash.update(bufferPointer: bytes)
                if prefix.count < ContentSniffer.prefixLength {
                    prefix += bytes.prefix(ContentSniffer.prefixLength - prefix.count)
                }
            }
            try await write(chunk)
        }
        guard size > 0 else { throw ParleyError.badRequest("the file is empty") }
    }

    static func hex(_ digest: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var text: [UInt8] = []
        for byte in digest { text += [digits[Int(byte >> 4)], digits[Int(byte & 15)]] }
        return String(decoding: text, as: UTF8.self)
    }

    /// The attachment the bytes read make.
    public func attachment() -> Attachment {
        let declaredAudio = upload.duration != nil
        let type = ContentSniffer.sniff(prefix, declaredAudio: declaredAudio)
        let dimensions = ContentSniffer.dimensions(prefix, type: type)
        let timed = type.hasPrefix("audio/") || type.hasPrefix("video/")
        return Attachment(
            id: upload.id, room: upload.room, user: upload.user, name: upload.name, type: type, size: size,
            width: dimensions?.width, height: dimensions?.height, duration: timed ? upload.duration : nil,
            digest: Self.hex(hash.finalize()), created: upload.timestamp
        )
    }
}
