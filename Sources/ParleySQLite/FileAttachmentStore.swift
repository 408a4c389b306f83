import Foundation
import Logging
import NIOCore
import NIOPosix
import ParleyCore
import SQLiteNIO
import ServiceLifecycle
import Synchronization

/// Attachments of the embedded server: bytes in files under `directory`, named by their
/// SHA-256 (`ab/abcdef...`), metadata in `directory/index.sqlite`.
///
/// An upload is written to `tmp/<id>`, synced, and renamed to its address only once complete,
/// and its row is added after that: a crash or a cut-off upload leaves at most a file in `tmp`
/// (emptied at start-up), never something that is served. Files are read and written on
/// SwiftNIO's thread pool, read in chunks of 64 KiB as a download consumes them.
public final class FileAttachmentStore: AttachmentStore {
    private let directory: String
    private let db: SQLiteConnection
    private let io = NonBlockingFileIO(threadPool: StorageThreads.pool)
    private let logger: Logger
    /// One writer at a time on the one connection: concurrent `attach` calls would otherwise
    /// nest their BEGINs, and an insert made during another's transaction would be rolled back
    /// with it.
    private let transactions = AsyncLock()

    private init(directory: String, db: SQLiteConnection, logger: Logger) {
        self.directory = directory
        self.db = db
        self.logger = logger
    }

    /// Opens (creating if needed) the store in `directory`, and empties its `tmp`.
    public static func open(directory: String, logger: Logger = Logger(label: "parley.attachments")) async throws -> FileAttachmentStore {
        let files = FileManager.default
        try? files.removeItem(atPath: directory + "/tmp")
        try files.createDirectory(atPath: directory + "/tmp", withIntermediateDirectories: true)
        let db = try await StorageThreads.open(directory + "/index.sqlite", logger: logger)
        do {
            for statement in [
                "PRAGMA journal_mode=WAL", "PRAGMA busy_timeout=5000",
                """
                CREATE TABLE IF NOT EXISTS attachments(
                    id TEXT PRIMARY KEY, room TEXT NOT NULL, user TEXT NOT NULL, name TEXT NOT NULL, type TEXT NOT NULL,
                    size INTEGER NOT NULL, width INTEGER, height INTEGER, duration INTEGER, digest TEXT NOT NULL,
                    created_ts INTEGER NOT NULL, message TEXT, client_id TEXT) WITHOUT ROWID
                """,
                "CREATE INDEX IF NOT EXISTS attachments_digest ON attachments(digest)",
                "CREATE INDEX IF NOT EXISTS attachments_user ON attachments(user, created_ts)",
                "CREATE INDEX IF NOT EXISTS attachments_message ON attachments(message) WHERE message IS NOT NULL",
                "CREATE INDEX IF NOT EXISTS attachments_orphans ON attachments(created_ts) WHERE message IS NULL",
            ] {
                _ = try await db.query(statement, [])
            }
        } catch {
            try? await db.close()
            throw error
        }
        return FileAttachmentStore(directory: directory, db: db, logger: logger)
    }

    public func run() async throws {
        try? await gracefulShutdown()
        await close()
    }

    /// Closes the metadata database (`run` does at shutdown).
    public func close() async {
        try? await db.close()
    }

    private func path(of digest: String) -> String {
        "\(directory)/\(digest.prefix(2))/\(digest)"
    }

    // MARK: Writing

    public func store(_ upload: UploadRequest, body: some AsyncSequence<ByteBuffer, any Error> & Sendable) async throws -> Attachment {
        let temporary = "\(directory)/tmp/\(upload.id)"
        var reader = UploadReader(upload)
        do {
            try await io.withFileHandle(path: temporary, mode: .write, flags: .allowFileCreation(posixMode: 0o600)) { handle in
                try await reader.read(body) { chunk in try await io.write(fileHandle: handle, buffer: chunk) }
                try await StorageThreads.pool.runIfActive {
                    try handle.withUnsafeFileDescriptor { descriptor in
                        guard fsync(descriptor) == 0 else { throw ParleyError.unavailable("could not store the file") }
                    }
                }
            }
            let attachment = reader.attachment()
            let final = path(of: attachment.digest)
            // Under the lock: a deletion of the last user of the same bytes cannot remove the
            // file between this check and the row that uses it.
            try await transactions.run {
                try FileManager.default.createDirectory(atPath: final.dropLastPathComponent, withIntermediateDirectories: true)
                if FileManager.default.fileExists(atPath: final) {
                    try? FileManager.default.removeItem(atPath: temporary)  // the same bytes are stored already
                } else {
                    try await self.io.rename(path: temporary, newName: final)
                }
                try await self.insertRow(attachment)
            }
            return attachment
        } catch {
            try? FileManager.default.removeItem(atPath: temporary)
            if error is ParleyError { throw error }
            logger.info("an upload did not complete", metadata: ["error": "\(error)"])
            throw ParleyError.unavailable("could not store the file")
        }
    }

    private func insertRow(_ attachment: Attachment) async throws {
        _ = try await db.query(
            """
            INSERT INTO attachments(id, room, user, name, type, size, width, height, duration, digest, created_ts)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            [
                .text(attachment.id), .text(attachment.room), .text(attachment.user), .text(attachment.name), .text(attachment.type),
                .integer(Int(attachment.size)), attachment.width.map { .integer($0) } ?? .null, attachment.height.map { .integer($0) } ?? .null,
                attachment.duration.map { .integer($0) } ?? .null, .text(attachment.digest), .integer(Int(attachment.created.milliseconds)),
            ]
        )
    }

    public func attach(ids: [String], room: String, user: String, message: String, clientId: String?) async throws -> [Attachment] {
        try await transactions.run { try await self.attachInTransaction(ids: ids, room: room, user: user, message: message, clientId: clientId) }
    }

    private func attachInTransaction(ids: [String], room: String, user: String, message: String, clientId: String?) async throws -> [Attachment] {
        _ = try await db.query("BEGIN IMMEDIATE", [])
        do {
            var attached: [Attachment] = []
            for id in ids {
                let attachment = try AttachmentRules.attach(try await find(id), id: id, room: room, user: user, message: message, clientId: clientId)
                _ = try await db.query(
                    "UPDATE attachments SET message = ?, client_id = ? WHERE id = ?",
                    [attachment.message.map { .text($0) } ?? .null, attachment.clientId.map { .text($0) } ?? .null, .text(id)]
                )
                attached.append(attachment)
            }
            _ = try await db.query("COMMIT", [])
            return attached
        } catch {
            _ = try? await db.query("ROLLBACK", [])
            throw error
        }
    }

    public func detach(message: String) async throws {
        try await transactions.run {
            _ = try await self.db.query("UPDATE attachments SET message = NULL, client_id = NULL WHERE message = ?", [.text(message)])
        }
    }

    public func deleteAttachments(of message: String) async throws {
        try await delete(where: "message = ?", [.text(message)])
    }

    public func deleteOrphans(uploadedBefore before: Timestamp) async throws -> Int {
        try await delete(where: "message IS NULL AND created_ts < ?", [.integer(Int(before.milliseconds))])
    }

    /// Deletes the rows `condition` selects, then the files no row uses any more.
    @discardableResult
    private func delete(where condition: String, _ binds: [SQLiteData]) async throws -> Int {
        try await transactions.run { try await self.deleteRows(where: condition, binds) }
    }

    private func deleteRows(where condition: String, _ binds: [SQLiteData]) async throws -> Int {
        let rows = try await db.query("DELETE FROM attachments WHERE \(condition) RETURNING digest", binds)
        for digest in Set(rows.compactMap { $0.column("digest")?.string }) {
            let used = try await db.query("SELECT 1 FROM attachments WHERE digest = ? LIMIT 1", [.text(digest)])
            if used.isEmpty { try? await io.remove(path: path(of: digest)) }
        }
        return rows.count
    }

    // MARK: Reading

    public func attachment(id: String) async throws -> Attachment? {
        try await find(id)
    }

    private func find(_ id: String) async throws -> Attachment? {
        let rows = try await db.query("SELECT * FROM attachments WHERE id = ?", [.text(id)])
        guard let row = rows.first, let room = row.column("room")?.string, let user = row.column("user")?.string,
            let name = row.column("name")?.string, let type = row.column("type")?.string, let size = row.column("size")?.integer,
            let digest = row.column("digest")?.string, let created = row.column("created_ts")?.integer
        else { return nil }
        return Attachment(
            id: id, room: room, user: user, name: name, type: type, size: Int64(size), width: row.column("width")?.integer,
            height: row.column("height")?.integer, duration: row.column("duration")?.integer, digest: digest,
            created: Timestamp(milliseconds: Int64(created)), message: row.column("message")?.string,
            clientId: row.column("client_id")?.string
        )
    }

    public func read(_ attachment: Attachment, range: Range<Int64>) -> ByteChunks {
        let path = path(of: attachment.digest)
        let io = io
        return ByteChunks(range: range) { offset, count in
            try await io.withFileHandle(path: path, mode: .read) { handle in
                try await io.read(fileHandle: handle, fromOffset: offset, byteCount: count, allocator: ByteBufferAllocator())
            }
        }
    }

    public func bytesUploaded(by user: String, since: Timestamp) async throws -> Int64 {
        let rows = try await db.query(
            "SELECT COALESCE(SUM(size), 0) AS total FROM attachments WHERE user = ? AND created_ts >= ?",
            [.text(user), .integer(Int(since.milliseconds))]
        )
        return Int64(rows.first?.column("total")?.integer ?? 0)
    }
}

extension String {
    fileprivate var dropLastPathComponent: String {
        guard let slash = lastIndex(of: "/") else { return "." }
        return String(self[..<slash])
    }
}

/// A lock for async code: `run` waits, without blocking a thread, until no other `run` is inside.
final class AsyncLock: Sendable {
    private struct State {
        var locked = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())

    func run<T: Sendable>(_ body: @Sendable () async throws -> T) async throws -> T {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let acquired = state.withLock { state -> Bool in
                if state.locked {
                    state.waiters.append(continuation)
                    return false
                }
                state.locked = true
                return true
            }
            if acquired { continuation.resume() }
        }
        defer {
            let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
                if state.waiters.isEmpty {
                    state.locked = false
                    return nil
                }
                return state.waiters.removeFirst()
            }
            next?.resume()
        }
        return try await body()
    }
}
