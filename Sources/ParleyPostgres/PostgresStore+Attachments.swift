import NIOCore
import ParleyCore
import PostgresNIO

/// Attachments in PostgreSQL, so that any instance serves any file: the bytes in rows of
/// 64 KiB (`attachment_chunks`, by SHA-256), never one huge value, read back one row per chunk
/// a download asks for. An upload writes its rows under `tmp:<id>` as its body arrives and, in
/// one transaction at the end, gives them their digest (or drops them when the same bytes are
/// stored already) and adds the attachment's row: a cut-off upload is never visible, and its
/// rows are deleted with the orphans.
extension PostgresStore: AttachmentStore {
    static let chunkBytes = ByteChunks.chunkSize

    public func store(_ upload: UploadRequest, body: some AsyncSequence<ByteBuffer, any Error> & Sendable) async throws -> Attachment {
        let temporary = "tmp:\(upload.id)"
        var reader = UploadReader(upload)
        var pending = ByteBuffer()
        var index = 0
        let created = upload.timestamp.milliseconds
        do {
            try await reader.read(body) { chunk in
                var chunk = chunk
                pending.writeBuffer(&chunk)
                while pending.readableBytes >= Self.chunkBytes {
                    let row = pending.readSlice(length: Self.chunkBytes)!
                    try await insertChunk(temporary, index: index, row, created: created)
                    index += 1
                }
                pending.discardReadBytes()
            }
            if pending.readableBytes > 0 {
                try await insertChunk(temporary, index: index, pending, created: created)
            }
            let attachment = reader.attachment()
            try await withConnection(leaseTimeout: configuration.operationTimeout) { connection in
                try await connection.withTransaction(logger: self.logger) { connection in
                    // Locks the blob's row whether it is new or not, so that a deletion of its
                    // last user waits for this upload's row (see `deleteAttachments`).
                    let claimed = try await connection.query(
                        """
                        INSERT INTO attachment_blobs(digest, size) VALUES (\(attachment.digest), \(attachment.size))
                        ON CONFLICT (digest) DO UPDATE SET size = EXCLUDED.size RETURNING (xmax = 0)
                        """,
                        logger: self.logger
                    )
                    var isNew = false
                    for try await inserted in claimed.decode(Bool.self) { isNew = inserted }
                    if isNew {
                        try await connection.query(
                            "UPDATE attachment_chunks SET digest = \(attachment.digest) WHERE digest = \(temporary)", logger: self.logger
                        )
                    } else {
                        try await connection.query("DELETE FROM attachment_chunks WHERE digest = \(temporary)", logger: self.logger)
                    }
                    try await connection.query(
                        """
                        INSERT INTO attachments(id, room, user_id, name, type, size, width, height, duration, digest, created_ts)
                        VALUES (\(attachment.id), \(attachment.room), \(attachment.user), \(attachment.name), \(attachment.type),
                            \(attachment.size), \(attachment.width), \(attachment.height), \(attachment.duration), \(attachment.digest),
                            \(attachment.created.milliseconds))
                        """,
                        logger: self.logger
                    )
                }
            }
            return attachment
        } catch {
            try? await write { try await self.client.query("DELETE FROM attachment_chunks WHERE digest = \(temporary)", logger: self.logger) }
            if let error = error as? ParleyError { throw error }
            logger.info("an upload did not complete", metadata: ["error": "\(String(reflecting: error))"])
            throw ParleyError.unavailable("could not store the file")
        }
    }

    private func insertChunk(_ key: String, index: Int, _ data: ByteBuffer, created: Int64) async throws {
        try await write {
            try await self.client.query(
                "INSERT INTO attachment_chunks(digest, index, data, created_ts) VALUES (\(key), \(Int32(index)), \(data), \(created))",
                logger: self.logger
            )
        }
    }

    public func attachment(id: String) async throws -> Attachment? {
        try await read {
            let rows = try await self.client.query(
                """
                SELECT id, room, user_id, name, type, size, width, height, duration, digest, created_ts, message, client_id
                FROM attachments WHERE id = \(id)
                """,
                logger: self.logger
            )
            return try await Self.attachments(rows).first
        }
    }

    public func read(_ attachment: Attachment, range: Range<Int64>) -> ByteChunks {
        let digest = attachment.digest
        return ByteChunks(range: range) { offset, count in
            let index = Int(offset / Int64(Self.chunkBytes))
            let within = Int(offset % Int64(Self.chunkBytes))
            let length = min(count, Self.chunkBytes - within)
            return try await self.read {
                let rows = try await self.client.query(
                    "SELECT substring(data FROM \(Int32(within + 1)) FOR \(Int32(length))) FROM attachment_chunks WHERE digest = \(digest) AND index = \(Int32(index))",
                    logger: self.logger
                )
                for try await data in rows.decode(ByteBuffer.self) { return data }
                throw ParleyError(.notFound, "the file is gone")
            }
        }
    }

    public func attach(ids: [String], room: String, user: String, message: String, clientId: String?) async throws -> [Attachment] {
        try await Self.unwrappingTransactionErrors {
            try await self.attachInTransaction(ids: ids, room: room, user: user, message: message, clientId: clientId)
        }
    }

    /// A refusal thrown inside a transaction comes out as the refusal itself.
    static func unwrappingTransactionErrors<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as PostgresTransactionError {
            if let refusal = error.closureError as? ParleyError { throw refusal }
            throw error
        }
    }

    private func attachInTransaction(ids: [String], room: String, user: String, message: String, clientId: String?) async throws -> [Attachment] {
        try await withConnection(leaseTimeout: configuration.operationTimeout) { connection in
            try await connection.withTransaction(logger: self.logger) { connection in
                let rows = try await connection.query(
                    """
                    SELECT id, room, user_id, name, type, size, width, height, duration, digest, created_ts, message, client_id
                    FROM attachments WHERE id = ANY(\(ids)) FOR UPDATE
                    """,
                    logger: self.logger
                )
                let found = Dictionary(uniqueKeysWithValues: try await Self.attachments(rows).map { ($0.id, $0) })
                var attached: [Attachment] = []
                for id in ids {
                    let attachment = try AttachmentRules.attach(found[id], id: id, room: room, user: user, message: message, clientId: clientId)
                    if attachment.message == message {
                        try await connection.query(
                            "UPDATE attachments SET message = \(message), client_id = \(clientId) WHERE id = \(id)", logger: self.logger
                        )
                    }
                    attached.append(attachment)
                }
                return attached
            }
        }
    }

    public func detach(message: String) async throws {
        try await write {
            try await self.client.query("UPDATE attachments SET message = NULL, client_id = NULL WHERE message = \(message)", logger: self.logger)
        }
    }

    public func deleteAttachments(of message: String) async throws {
        _ = try await deleteAttachments(where: "message = $1", message)
    }

    public func deleteOrphans(uploadedBefore before: Timestamp) async throws -> Int {
        // Rows of uploads cut off long ago, by this instance or another.
        try await write {
            try await self.client.query(
                "DELETE FROM attachment_chunks WHERE digest LIKE 'tmp:%' AND created_ts < \(before.milliseconds)", logger: self.logger
            )
        }
        return try await deleteAttachments(where: "message IS NULL AND created_ts < $1", before.milliseconds)
    }

    /// Deletes the attachments `condition` selects, then the bytes no attachment uses any more.
    private func deleteAttachments(where condition: String, _ value: some PostgresEncodable & Sendable) async throws -> Int {
        try await withConnection(leaseTimeout: configuration.operationTimeout) { connection in
            try await connection.withTransaction(logger: self.logger) { connection in
                var bindings = PostgresBindings()
                try bindings.append(value)
                let rows = try await connection.query(
                    PostgresQuery(unsafeSQL: "DELETE FROM attachments WHERE \(condition) RETURNING digest", binds: bindings), logger: self.logger
                )
                var digests: Set<String> = []
                var count = 0
                for try await digest in rows.decode(String.self) {
                    digests.insert(digest)
                    count += 1
                }
                for digest in digests {
                    // Lock the blob first: an upload of the same bytes holds or waits for this
                    // lock, and the check below (a new statement) then sees its row.
                    try await connection.query("SELECT 1 FROM attachment_blobs WHERE digest = \(digest) FOR UPDATE", logger: self.logger)
                    var used = true
                    let rows = try await connection.query("SELECT EXISTS (SELECT 1 FROM attachments WHERE digest = \(digest))", logger: self.logger)
                    for try await exists in rows.decode(Bool.self) { used = exists }
                    guard !used else { continue }
                    try await connection.query("DELETE FROM attachment_blobs WHERE digest = \(digest)", logger: self.logger)
                    try await connection.query("DELETE FROM attachment_chunks WHERE digest = \(digest)", logger: self.logger)
                }
                return count
            }
        }
    }

    public func bytesUploaded(by user: String, since: Timestamp) async throws -> Int64 {
        try await read {
            let rows = try await self.client.query(
                "SELECT COALESCE(SUM(size), 0)::BIGINT FROM attachments WHERE user_id = \(user) AND created_ts >= \(since.milliseconds)",
                logger: self.logger
            )
            for try await total in rows.decode(Int64.self) { return total }
            return 0
        }
    }

    private static func attachments(_ rows: PostgresRowSequence) async throws -> [Attachment] {
        var found: [Attachment] = []
        for try await row in rows {
            let columns = row.makeRandomAccess()
            found.append(Attachment(
                id: try columns["id"].decode(String.self), room: try columns["room"].decode(String.self),
                user: try columns["user_id"].decode(String.self), name: try columns["name"].decode(String.self),
                type: try columns["type"].decode(String.self), size: try columns["size"].decode(Int64.self),
                width: try columns["width"].decode(Int32?.self).map(Int.init), height: try columns["height"].decode(Int32?.self).map(Int.init),
                duration: try columns["duration"].decode(Int32?.self).map(Int.init), digest: try columns["digest"].decode(String.self),
                created: Timestamp(milliseconds: try columns["created_ts"].decode(Int64.self)), message: try columns["message"].decode(String?.self),
                clientId: try columns["client_id"].decode(String?.self)
            ))
        }
        return found
    }
}
