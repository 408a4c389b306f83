import CoreMetrics
import Logging
import NIOCore
import NIOPosix
import ParleyCore
import SQLiteNIO
import ServiceLifecycle
import Synchronization

/// History in an embedded SQLite file (WAL mode), with group commit.
///
/// One writer task owns all writes: it takes every append queued while the previous commit
/// ran and commits them in one transaction (one fsync), so durability does not cap throughput
/// at one fsync per message. The writer alone assigns `seq`, from a per-room cache it loads
/// from the file, so only one process may write a given file. Reads use their own connection
/// and see every committed message (WAL). Read positions are written on a third connection with
/// `synchronous=NORMAL`: they survive a crash of the process, and a power loss may take the last
/// few back (a badge shows a message as unread again), which no message's durability depends on.
public final class SQLiteMessageStore: MessageStore {
    public struct Configuration: Sendable {
        /// `FULL` syncs every commit to disk (survives power loss); `NORMAL` survives a crash
        /// of the process but may lose the last commits on power loss.
        public enum Synchronous: String, Sendable { case full = "FULL", normal = "NORMAL" }

        public var path: String
        public var synchronous: Synchronous = .full
        public var idempotencyWindow: Duration = .seconds(600)
        /// Most appends committed in one transaction.
        public var maxBatch = 512
        /// Where the batch-size histogram goes; none when nil.
        public var metricsFactory: (any MetricsFactory)?
        /// The threads its statements block on.
        public var threadPool: NIOThreadPool = StorageThreads.pool

        public init(path: String) {
            self.path = path
        }
    }

    private typealias Pending = AppendQueue.Pending

    private let configuration: Configuration
    private let writer: SQLiteConnection
    private let reader: SQLiteConnection
    /// Read positions: small writes that must not wait for the messages' group commit.
    private let positions: SQLiteConnection
    private let logger: Logger
    private let queue: AppendQueue
    /// Last seq per room as known to the writer; touched only by the writer task.
    private let lastSeqs = Mutex<[String: Int64]>([:])
    /// The last rowid given out in `message_search`; nil until the writer loads it.
    private let lastSearchRowid = Mutex<Int64?>(nil)
    /// Every room's sanctions as committed (by room, then user): the writer alone changes them,
    /// so joins and posts check them without a query.
    private let sanctions = Mutex<[String: [String: Sanction]]>([:])
    /// Batches and appends committed so far (for benchmarks).
    public let stats = Mutex<(batches: Int, appends: Int)>((0, 0))
    private let batchSizes: Recorder?
    private let webhookSelection = Mutex<WebhookSelection?>(nil)
    /// Rooms to list for users (`addToInbox`), written together: a crowd joining at once
    /// costs one statement and one commit per batch instead of one per join.
    private let inboxWrites = Mutex(InboxWrites())

    private struct InboxWrites {
        var queued: [(user: String, room: String, seq: Int64, done: CheckedContinuation<Void, any Error>)] = []
        /// A task is writing the queue: later rows join its next batch.
        var flushing = false
    }

    /// Rows per statement: three variables each, well under SQLite's limit.
    static let inboxBatch = 500

    private init(configuration: Configuration, writer: SQLiteConnection, reader: SQLiteConnection, positions: SQLiteConnection, logger: Logger) {
        self.configuration = configuration
        self.queue = AppendQueue(maxBatch: configuration.maxBatch)
        self.writer = writer
        self.reader = reader
        self.positions = positions
        self.logger = logger
        self.batchSizes = configuration.metricsFactory.map { Recorder(label: ParleyMetrics.batchSizeLabel, factory: $0) }
    }

    /// Opens (creating if needed) and migrates the database file.
    public static func open(_ configuration: Configuration, logger: Logger = Logger(label: "parley.sqlite")) async throws -> SQLiteMessageStore {
        let writer = try await StorageThreads.open(configuration.path, on: configuration.threadPool, logger: logger)
        do {
            for pragma in ["PRAGMA journal_mode=WAL", "PRAGMA synchronous=\(configuration.synchronous.rawValue)", "PRAGMA busy_timeout=5000"] {
                _ = try await writer.query(pragma, [])
            }
            try await migrate(writer)
            // One process writes this file: webhooks it had claimed when it stopped are free
            // again at once, not when their leases run out.
            _ = try await writer.query("UPDATE webhook_outbox SET lease_until = 0 WHERE lease_until > 0", [])
            let reader = try await StorageThreads.open(configuration.path, on: configuration.threadPool, logger: logger)
            _ = try await reader.query("PRAGMA busy_timeout=5000", [])
            let positions = try await StorageThreads.open(configuration.path, on: configuration.threadPool, logger: logger)
            // No busy timeout here: `positionsWrite` waits for the lock without holding a thread.
            for pragma in ["PRAGMA busy_timeout=0", "PRAGMA synchronous=NORMAL"] { _ = try await positions.query(pragma, []) }
            let store = SQLiteMessageStore(configuration: configuration, writer: writer, reader: reader, positions: positions, logger: logger)
            try await store.loadSanctions()
            return store
        } catch {
            try? await writer.close()
            throw error
        }
    }

    private static let migrations: [[String]] = [
        [
            """
            CREATE TABLE messages(
                room TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL, user TEXT NOT NULL,
                content TEXT NOT NULL, ts INTEGER NOT NULL, client_id TEXT,
                PRIMARY KEY (room, seq)) WITHOUT ROWID
            """,
            "CREATE INDEX messages_client_id ON messages(room, user, client_id) WHERE client_id IS NOT NULL",
        ],
        [
            // `" alice bob "`: the users a message mentions (`Message.storedMentions`).
            "ALTER TABLE messages ADD COLUMN mentions TEXT",
            """
            CREATE TABLE read_positions(
                user TEXT NOT NULL, room TEXT NOT NULL, seq INTEGER NOT NULL,
                PRIMARY KEY (user, room)) WITHOUT ROWID
            """,
        ],
        [
            // Full-text search: each message's content, written with it in the same commit.
            "CREATE VIRTUAL TABLE message_search USING fts5(content, id UNINDEXED, room UNINDEXED, seq UNINDEXED, tokenize = 'unicode61')",
            "INSERT INTO message_search(content, id, room, seq) SELECT content, id, room, seq FROM messages",
        ],
        [
            // Changes (edits, deletions, reactions) are rows too: `kind` (NULL for a message)
            // and `target`. A message's row keeps its current state; `search_rowid` is its
            // row in `message_search`, so an edit or a deletion finds it.
            "ALTER TABLE messages ADD COLUMN kind TEXT",
            "ALTER TABLE messages ADD COLUMN target TEXT",
            "ALTER TABLE messages ADD COLUMN reply_to TEXT",
            "ALTER TABLE messages ADD COLUMN edited_ts INTEGER",
            "ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE messages ADD COLUMN reactions TEXT",
            "ALTER TABLE messages ADD COLUMN search_rowid INTEGER",
            "CREATE INDEX messages_id ON messages(room, id)",
            "CREATE INDEX messages_target ON messages(room, target) WHERE target IS NOT NULL",
            """
            UPDATE messages SET search_rowid = s.rowid FROM (SELECT rowid, room, seq FROM message_search) AS s
            WHERE messages.room = s.room AND messages.seq = s.seq
            """,
        ],
        [
            // Moderation: a row's `until` (a timed mute or ban), and each room's sanctions.
            "ALTER TABLE messages ADD COLUMN until_ts INTEGER",
            """
            CREATE TABLE sanctions(
                room TEXT NOT NULL, user TEXT NOT NULL, muted_until INTEGER, mute_reason TEXT NOT NULL DEFAULT '',
                banned_until INTEGER, ban_reason TEXT NOT NULL DEFAULT '', PRIMARY KEY (room, user)) WITHOUT ROWID
            """,
        ],
        [
            // The files a message shares (`Attachment.stored`).
            "ALTER TABLE messages ADD COLUMN attachments TEXT",
        ],
        [
            // Random secrets made once (`sharedSecret`).
            "CREATE TABLE secrets(name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
        ],
        [
            // Web Push: browsers' subscriptions, and the rooms each user muted.
            """
            CREATE TABLE push_subscriptions(
                endpoint TEXT PRIMARY KEY, user TEXT NOT NULL, p256dh BLOB NOT NULL, auth BLOB NOT NULL, created INTEGER NOT NULL)
            """,
            "CREATE INDEX push_subscriptions_user ON push_subscriptions(user, created)",
            "CREATE TABLE push_mutes(user TEXT NOT NULL, room TEXT NOT NULL, PRIMARY KEY (user, room)) WITHOUT ROWID",
        ],
        [
            // The webhook outbox (`WebhookOutbox`): one row per event and endpoint, until
            // delivered (deleted) or dead (kept, `dead = 1`).
            """
            CREATE TABLE webhook_outbox(
                id INTEGER PRIMARY KEY AUTOINCREMENT, target INTEGER NOT NULL, room TEXT NOT NULL, kind TEXT NOT NULL,
                user TEXT NOT NULL, seq INTEGER, ts INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
                due_at INTEGER NOT NULL DEFAULT 0, lease_until INTEGER NOT NULL DEFAULT 0, dead INTEGER NOT NULL DEFAULT 0, last_error TEXT)
            """,
            "CREATE INDEX webhook_outbox_queues ON webhook_outbox(target, room, id) WHERE dead = 0",
        ],
    ]

    private static func migrate(_ db: SQLiteConnection) async throws {
        let version = try await db.query("PRAGMA user_version", []).first?.column("user_version")?.integer ?? 0
        for (index, statements) in migrations.enumerated() where index >= version {
            _ = try await db.query("BEGIN IMMEDIATE", [])
            do {
                for statement in statements { _ = try await db.query(statement, []) }
                _ = try await db.query("PRAGMA user_version = \(index + 1)", [])
                _ = try await db.query("COMMIT", [])
            } catch {
                _ = try? await db.query("ROLLBACK", [])
                throw error
            }
        }
    }

    private func loadSanctions() async throws {
        var all: [String: [String: Sanction]] = [:]
        for row in try await writer.query("SELECT room, user, muted_until, mute_reason, banned_until, ban_reason FROM sanctions", []) {
            guard let room = row.column("room")?.string, let user = row.column("user")?.string else { continue }
            all[room, default: [:]][user] = Sanction(
                mutedUntil: row.column("muted_until")?.integer.map { Timestamp(milliseconds: Int64($0)) },
                muteReason: row.column("mute_reason")?.string ?? "",
                bannedUntil: row.column("banned_until")?.integer.map { Timestamp(milliseconds: Int64($0)) },
                banReason: row.column("ban_reason")?.string ?? ""
            )
        }
        sanctions.withLock { $0 = all }
    }

    public func sanction(room: String, user: String) async throws -> Sanction? {
        sanctions.withLock { $0[room]?[user] }
    }

    /// A write on the read positions' connection. When the messages' commit holds the write
    /// lock, it waits for it here, in the task, with backoff (1 ms, doubling to 32 ms, for up to
    /// 5 s in all), instead of in SQLite's busy handler: that one sleeps in a thread of the
    /// storage pool, and enough such waits took every thread while the commit holding the lock
    /// needed one to finish.
    @discardableResult
    private func positionsWrite(_ sql: String, _ binds: [SQLiteData]) async throws -> [SQLiteRow] {
        var delay = Duration.milliseconds(1)
        var waited = Duration.zero
        while true {
            do {
                return try await positions.query(sql, binds)
            } catch let error as SQLiteError where [.busy, .locked, .busyTimeout].contains(error.reason) && waited < .seconds(5) {
                try await Task.sleep(for: delay)
                waited += delay
                delay = min(delay * 2, .milliseconds(32))
            }
        }
    }

    // MARK: Web Push (written on the read positions' connection: small writes, never behind a commit)

    public func addPushSubscription(_ subscription: PushSubscription) async throws {
        _ = try await positionsWrite("""
            INSERT INTO push_subscriptions(endpoint, user, p256dh, auth, created) VALUES (?, ?, ?, ?, ?)
            ON CONFLICT(endpoint) DO UPDATE SET user = excluded.user, p256dh = excluded.p256dh, auth = excluded.auth, created = excluded.created
            """,
            [
                .text(subscription.endpoint), .text(subscription.user), .blob(ByteBuffer(bytes: subscription.p256dh)),
                .blob(ByteBuffer(bytes: subscription.auth)), .integer(Int(Timestamp.now.milliseconds)),
            ]
        )
    }

    public func removePushSubscription(endpoint: String, user: String?) async throws -> Bool {
        let rows = if let user {
            try await positionsWrite("DELETE FROM push_subscriptions WHERE endpoint = ? AND user = ? RETURNING endpoint", [.text(endpoint), .text(user)])
        } else {
            try await positionsWrite("DELETE FROM push_subscriptions WHERE endpoint = ? RETURNING endpoint", [.text(endpoint)])
        }
        return !rows.isEmpty
    }

    public func pushSubscriptions(user: String) async throws -> [PushSubscription] {
        let rows = try await reader.query(
            "SELECT endpoint, p256dh, auth FROM push_subscriptions WHERE user = ? ORDER BY created, endpoint", [.text(user)]
        )
        return rows.compactMap { row in
            guard let endpoint = row.column("endpoint")?.string, let key = row.column("p256dh")?.blob, let auth = row.column("auth")?.blob
            else { return nil }
            return PushSubscription(user: user, endpoint: endpoint, p256dh: Array(key.readableBytesView), auth: Array(auth.readableBytesView))
        }
    }

    public func pushMutes(user: String) async throws -> Set<String> {
        let rows = try await reader.query("SELECT room FROM push_mutes WHERE user = ?", [.text(user)])
        return Set(rows.compactMap { $0.column("room")?.string })
    }

    public func setPushMutes(user: String, rooms: Set<String>) async throws {
        // Two statements, no transaction: this connection is shared by concurrent calls.
        let list = "[" + rooms.sorted().map(JSONText.quote).joined(separator: ",") + "]"
        _ = try await positionsWrite(
            "DELETE FROM push_mutes WHERE user = ? AND room NOT IN (SELECT value FROM json_each(?))", [.text(user), .text(list)]
        )
        _ = try await positionsWrite("INSERT OR IGNORE INTO push_mutes(user, room) SELECT ?, value FROM json_each(?)", [.text(user), .text(list)])
    }

    public func sharedSecret(named name: String) async throws -> [UInt8] {
        let fresh = (0..<32).map { _ in UInt8.random(in: 0...255) }
        _ = try await positionsWrite(
            "INSERT INTO secrets(name, value) VALUES (?, ?) ON CONFLICT(name) DO NOTHING", [.text(name), .blob(ByteBuffer(bytes: fresh))]
        )
        let rows = try await positions.query("SELECT value FROM secrets WHERE name = ?", [.text(name)])
        guard let value = rows.first?.column("value")?.blob else { throw ParleyError.unavailable("no secret '\(name)'") }
        return Array(value.readableBytesView)
    }

    // MARK: Service

    /// Runs the writer until graceful shutdown, then commits what is queued and closes.
    public func run() async throws {
        // Cancelled (another service failed) or shut down: either way, commit what is
        // queued and stop, so that the process can exit.
        await withTaskCancellationOrGracefulShutdownHandler {
            while let batch = await queue.nextBatch() {
                await commit(batch)
            }
        } onCancelOrGracefulShutdown: {
            self.queue.stop()
        }
        try? await positions.close()
        try? await reader.close()
        try? await writer.close()
    }

    // MARK: Writing

    public func append(_ draft: MessageDraft) async throws -> AppendResult {
        try await queue.append(draft)
    }

    private func commit(_ batch: [Pending]) async {
        do {
            let results = try await writeBatch(batch.map(\.draft))
            stats.withLock { $0 = ($0.batches + 1, $0.appends + batch.count) }
            batchSizes?.record(batch.count)
            for (pending, result) in zip(batch, results) { pending.continuation.resume(with: result) }
        } catch {
            logger.error("commit failed", metadata: ["error": "\(error)", "batch": "\(batch.count)"])
            // The caches may hold values of the rolled-back transaction: reload them on next use.
            lastSeqs.withLock { $0.removeAll() }
            lastSearchRowid.withLock { $0 = nil }
            try? await loadSanctions()
            let failure = ParleyError.unavailable("could not store the message")
            for pending in batch { pending.continuation.resume(throwing: failure) }
        }
    }

    /// The batch's writes, in order: new rows, and the current state of stored messages that
    /// its changes changed (with their search rows), applied at the end of the transaction.
    private struct BatchWrites {
        var rows: [Message] = []
        /// Index in `rows` by message id.
        var index: [String: Int] = [:]
        /// Stored messages changed by the batch, by id, with their `search_rowid`.
        var changed: [String: (message: Message, searchRowid: Int64?)] = [:]
        /// Messages deleted by the batch whose stored edits must lose their content.
        var deleted: [(room: String, id: String)] = []
        /// Sanctions the batch changed, by room and user (nil: lifted).
        var sanctions: [RoomUser: Sanction?] = [:]
    }

    struct RoomUser: Hashable {
        var room: String
        var user: String
    }

    private func writeBatch(_ drafts: [MessageDraft]) async throws -> [Result<AppendResult, ParleyError>] {
        _ = try await writer.query("BEGIN IMMEDIATE", [])
        do {
            var known = try await recentClientIds(for: drafts)
            var results: [Result<AppendResult, ParleyError>] = []
            results.reserveCapacity(drafts.count)
            var writes = BatchWrites()
            for draft in drafts {
                let key = IdempotencyKey(draft)
                if let key, let original = known[key] {
                    var target: Message?
                    if let id = original.target { target = try await current(id, room: original.room, writes: writes)?.message }
                    results.append(.success(AppendResult(message: original, duplicate: true, target: target)))
                    continue
                }
                let result: AppendResult
                do {
                    result = try await apply(draft, writes: &writes)
                } catch let error as ParleyError {
                    results.append(.failure(error))
                    continue
                }
                if let key, !result.duplicate { known[key] = result.message }
                results.append(.success(result))
            }
            try await insert(writes.rows)
            try await update(writes)
            try await insertWebhooks(for: writes.rows)
            _ = try await writer.query("COMMIT", [])
            if !writes.sanctions.isEmpty {
                sanctions.withLock { all in
                    for (key, sanction) in writes.sanctions { all[key.room, default: [:]][key.user] = sanction }
                }
            }
            return results
        } catch {
            _ = try? await writer.query("ROLLBACK", [])
            throw error
        }
    }

    /// One draft of the batch: a message, or a change decided against the message's state as
    /// the batch left it.
    private func apply(_ draft: MessageDraft, writes: inout BatchWrites) async throws -> AppendResult {
        let key = RoomUser(room: draft.room, user: draft.sanctionedUser)
        let sanction = writes.sanctions[key] ?? sanctions.withLock { $0[key.room]?[key.user] }
        let after = try draft.checked(against: sanction)
        if draft.moderation != nil {
            writes.sanctions[key] = .some(after)
            let row = draft.stored(seq: try await nextSeq(room: draft.room))
            writes.index[row.id] = writes.rows.count
            writes.rows.append(row)
            return AppendResult(message: row, duplicate: false)
        }
        guard let change = draft.change else {
            var answered: Message?
            if let replyTo = draft.replyTo {
                answered = try await current(replyTo, room: draft.room, writes: writes)?.message
                try Message.checkReplyTarget(answered, id: replyTo, room: draft.room)
            }
            let message = draft.stored(seq: try await nextSeq(room: draft.room))
            writes.index[message.id] = writes.rows.count
            writes.rows.append(message)
            return AppendResult(message: message.quoting(answered), duplicate: false)
        }
        let found = try await current(change.target, room: draft.room, writes: writes)
        let outcome = try change.apply(draft, to: found?.message)
        guard case .store(var row, let target) = outcome else { return .change(outcome) { 0 } }
        row.seq = try await nextSeq(room: draft.room)
        if let index = writes.index[target.id] {
            writes.rows[index] = target
        } else {
            writes.changed[target.id] = (target, found?.searchRowid)
        }
        if target.deleted {
            writes.deleted.append((target.room, target.id))
            for i in writes.rows.indices where writes.rows[i].kind == .edit && writes.rows[i].target == target.id {
                writes.rows[i].content = ""
            }
        }
        writes.index[row.id] = writes.rows.count
        writes.rows.append(row)
        return AppendResult(message: row, duplicate: false, target: target)
    }

    /// Message `id` of `room` as the batch leaves it so far (without its quote).
    private func current(_ id: String, room: String, writes: BatchWrites) async throws -> (message: Message, searchRowid: Int64?)? {
        if let index = writes.index[id] { return (writes.rows[index], nil) }
        if let changed = writes.changed[id] { return changed }
        let rows = try await writer.query("SELECT \(Self.columns), m.search_rowid FROM messages m INDEXED BY messages_id WHERE m.room = ? AND m.id = ?", [.text(room), .text(id)])
        guard let row = rows.first, let message = Self.message(row) else { return nil }
        return (message, row.column("search_rowid")?.integer.map(Int64.init))
    }

    /// Writes the batch's changes to stored messages, and their search rows.
    private func update(_ writes: BatchWrites) async throws {
        for (message, searchRowid) in writes.changed.values {
            _ = try await writer.query(
                "UPDATE messages SET content = ?, edited_ts = ?, deleted = ?, reactions = ?, mentions = ?, attachments = ? WHERE room = ? AND seq = ?",
                [
                    .text(message.content), message.edited.map { .integer(Int($0.milliseconds)) } ?? .null, .integer(message.deleted ? 1 : 0),
                    Reaction.stored(message.reactions).map { .text($0) } ?? .null, message.storedMentions.map { .text($0) } ?? .null,
                    Attachment.stored(message.attachments).map { .text($0) } ?? .null,
                    .text(message.room), .integer(Int(message.seq)),
                ]
            )
            guard let searchRowid else { continue }
            _ = try await writer.query("DELETE FROM message_search WHERE rowid = ?", [.integer(Int(searchRowid))])
            if !message.deleted {
                _ = try await writer.query(
                    "INSERT INTO message_search(rowid, content, id, room, seq) VALUES (?, ?, ?, ?, ?)",
                    [.integer(Int(searchRowid)), .text(message.content), .text(message.id), .text(message.room), .integer(Int(message.seq))]
                )
            }
        }
        for (room, id) in writes.deleted {
            _ = try await writer.query(
                "UPDATE messages INDEXED BY messages_target SET content = '' WHERE room = ? AND target = ? AND kind = 'edit'", [.text(room), .text(id)]
            )
        }
        for (key, sanction) in writes.sanctions {
            guard let sanction else {
                _ = try await writer.query("DELETE FROM sanctions WHERE room = ? AND user = ?", [.text(key.room), .text(key.user)])
                continue
            }
            _ = try await writer.query(
                """
                INSERT INTO sanctions(room, user, muted_until, mute_reason, banned_until, ban_reason) VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT(room, user) DO UPDATE SET muted_until = excluded.muted_until, mute_reason = excluded.mute_reason,
                    banned_until = excluded.banned_until, ban_reason = excluded.ban_reason
                """,
                [
                    .text(key.room), .text(key.user), sanction.mutedUntil.map { .integer(Int($0.milliseconds)) } ?? .null, .text(sanction.muteReason),
                    sanction.bannedUntil.map { .integer(Int($0.milliseconds)) } ?? .null, .text(sanction.banReason),
                ]
            )
        }
    }

    /// The stored messages whose `(room, user, clientId)` a draft of the batch reuses within
    /// the idempotency window: one query for the whole batch.
    private func recentClientIds(for drafts: [MessageDraft]) async throws -> [IdempotencyKey: Message] {
        let keyed = drafts.filter { $0.clientId != nil }
        guard let oldest = keyed.map(\.timestamp.milliseconds).min() else { return [:] }
        var known: [IdempotencyKey: Message] = [:]
        var start = 0
        while start < keyed.count {
            let chunk = keyed[start..<min(start + 256, keyed.count)]
            var binds: [SQLiteData] = []
            for draft in chunk { binds += [.text(draft.room), .text(draft.user), .text(draft.clientId!)] }
            binds.append(.integer(Int(oldest - configuration.idempotencyWindow.milliseconds)))
            let tuples = Array(repeating: "(?,?,?)", count: chunk.count).joined(separator: ",")
            // One index search per key. `(room, user, client_id) IN (VALUES ...)` scanned the
            // whole index instead: 167 ms against 0.009 ms per batch at 100k messages.
            let rows = try await writer.query(
                """
                WITH k(room, user, client_id) AS (VALUES \(tuples))
                SELECT \(Self.columns)
                FROM k CROSS JOIN messages AS m INDEXED BY messages_client_id
                    ON m.room = k.room AND m.user = k.user AND m.client_id = k.client_id
                WHERE m.client_id IS NOT NULL AND m.ts >= ? ORDER BY m.seq
                """,
                binds
            )
            for message in rows.compactMap(Self.message) {
                if let key = IdempotencyKey(message) { known[key] = message }
            }
            start += chunk.count
        }
        return known
    }

    private func nextSeq(room: String) async throws -> Int64 {
        let cached = lastSeqs.withLock { $0[room] }
        let last: Int64
        if let cached {
            last = cached
        } else {
            last = try await Self.maxSeq(room: room, on: writer)
        }
        lastSeqs.withLock { $0[room] = last + 1 }
        return last + 1
    }

    /// Inserts in multi-row statements: one statement (and one thread-pool hop) per 128 rows.
    /// A message gets the next rowid of `message_search` (in the order of storing, which search
    /// pages by) unless it is already deleted; a change is not searchable.
    private func insert(_ rows: [Message]) async throws {
        var searchRowid = try await loadLastSearchRowid()
        var start = 0
        while start < rows.count {
            let chunk = rows[start..<min(start + 128, rows.count)]
            let placeholders = Array(repeating: "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", count: chunk.count).joined(separator: ",")
            var binds: [SQLiteData] = []
            binds.reserveCapacity(chunk.count * 17)
            var searchBinds: [SQLiteData] = []
            searchBinds.reserveCapacity(chunk.count * 5)
            for message in chunk {
                let searchable = message.kind == .message && !message.deleted
                if searchable {
                    searchRowid += 1
                    searchBinds += [.integer(Int(searchRowid)), .text(message.content), .text(message.id), .text(message.room), .integer(Int(message.seq))]
                }
                binds += [
                    .text(message.room), .integer(Int(message.seq)), .text(message.id), .text(message.user),
                    .text(message.content), .integer(Int(message.timestamp.milliseconds)),
                    message.clientId.map { .text($0) } ?? .null, message.storedMentions.map { .text($0) } ?? .null,
                    message.kind == .message ? .null : .text(message.kind.rawValue), message.target.map { .text($0) } ?? .null,
                    message.replyTo.map { .text($0) } ?? .null, message.edited.map { .integer(Int($0.milliseconds)) } ?? .null,
                    .integer(message.deleted ? 1 : 0), Reaction.stored(message.reactions).map { .text($0) } ?? .null,
                    searchable ? .integer(Int(searchRowid)) : .null, message.until.map { .integer(Int($0.milliseconds)) } ?? .null,
                    Attachment.stored(message.attachments).map { .text($0) } ?? .null,
                ]
            }
            _ = try await writer.query(
                """
                INSERT INTO messages(room, seq, id, user, content, ts, client_id, mentions, kind, target, reply_to, edited_ts, deleted, reactions, search_rowid, until_ts, attachments)
                VALUES \(placeholders)
                """,
                binds
            )
            if !searchBinds.isEmpty {
                let searchRows = Array(repeating: "(?,?,?,?,?)", count: searchBinds.count / 5).joined(separator: ",")
                _ = try await writer.query("INSERT INTO message_search(rowid, content, id, room, seq) VALUES \(searchRows)", searchBinds)
            }
            start += chunk.count
        }
        lastSearchRowid.withLock { $0 = searchRowid }
    }

    /// The batch's rows that webhooks were selected for, into the outbox, in the commit.
    private func insertWebhooks(for rows: [Message]) async throws {
        let outbox = Self.outboxRows(for: rows, selection: webhookSelection.withLock { $0 })
        var start = 0
        while start < outbox.count {
            let chunk = outbox[start..<min(start + 128, outbox.count)]
            var binds: [SQLiteData] = []
            binds.reserveCapacity(chunk.count * 6)
            for (target, message) in chunk {
                binds += [
                    .integer(target), .text(message.room), .text(WebhookKind(message.kind).rawValue), .text(message.user),
                    .integer(Int(message.seq)), .integer(Int(message.timestamp.milliseconds)),
                ]
            }
            let placeholders = Array(repeating: "(?,?,?,?,?,?)", count: chunk.count).joined(separator: ",")
            _ = try await writer.query("INSERT INTO webhook_outbox(target, room, kind, user, seq, ts) VALUES \(placeholders)", binds)
            start += chunk.count
        }
    }

    private func loadLastSearchRowid() async throws -> Int64 {
        if let cached = lastSearchRowid.withLock({ $0 }) { return cached }
        let rows = try await writer.query("SELECT MAX(rowid) AS rowid FROM message_search", [])
        return Int64(rows.first?.column("rowid")?.integer ?? 0)
    }

    // MARK: Reading

    public func history(room: String, query: HistoryQuery) async throws -> HistoryPage {
        guard let (lower, upper) = query.seqRange else { return HistoryPage(messages: [], hasMore: false) }
        let order = query.pagesForward ? "ASC" : "DESC"
        let rows = try await reader.query(
            """
            SELECT \(Self.quotedColumns(from: "SELECT * FROM messages WHERE room = ? AND seq > ? AND seq < ? ORDER BY seq \(order) LIMIT ?"))
            ORDER BY m.seq \(order)
            """,
            [.text(room), .integer(Int(lower)), .integer(Int(upper)), .integer(query.limit + 1)]
        )
        var messages = rows.compactMap(Self.message)
        let hasMore = messages.count > query.limit
        if hasMore { messages.removeLast() }
        if !query.pagesForward { messages.reverse() }
        return HistoryPage(messages: messages, hasMore: hasMore)
    }

    public func lastSeq(room: String) async throws -> Int64 {
        try await Self.maxSeq(room: room, on: reader)
    }

    public func rooms() async throws -> [(room: String, seq: Int64)] {
        let rows = try await reader.query("SELECT room, MAX(seq) AS seq FROM messages GROUP BY room ORDER BY room", [])
        return rows.compactMap { row in
            guard let room = row.column("room")?.string, let seq = row.column("seq")?.integer else { return nil }
            return (room, Int64(seq))
        }
    }

    // MARK: Search

    public func search(terms: [String], before: String?, limit: Int) async throws -> [Message] {
        guard !terms.isEmpty else { return [] }
        // Each word as a quoted FTS5 string: the user's text is never query syntax.
        let match = terms.map { "\"" + $0.filter { $0 != "\"" } + "\"" }.joined(separator: " ")
        // Newest first in the order of storing (the FTS rowid), which FTS5 walks backwards and
        // stops after `limit`: a word in every tenth of a million messages costs what a rare one
        // does. A page goes on from where the cursor message sits in that order.
        let cursor = before == nil ? "" : "AND s.rowid < (SELECT rowid FROM message_search WHERE message_search MATCH ?1 AND id = ?3)"
        let rows = try await reader.query(
            """
            SELECT \(Self.quotedColumns(from: """
                SELECT m.*, s.rowid AS search_order FROM message_search s JOIN messages m ON m.room = s.room AND m.seq = s.seq
                WHERE message_search MATCH ?1 \(cursor) ORDER BY s.rowid DESC LIMIT ?2
                """))
            ORDER BY m.search_order DESC
            """,
            [.text(match), .integer(limit)] + (before.map { [.text($0)] } ?? [])
        )
        return rows.compactMap(Self.message)
    }

    // MARK: Read positions

    public func addToInbox(user: String, room: String, readSeq: Int64) async throws {
        try await withCheckedThrowingContinuation { (done: CheckedContinuation<Void, any Error>) in
            let leads = inboxWrites.withLock { writes in
                writes.queued.append((user, room, readSeq, done))
                defer { writes.flushing = true }
                return !writes.flushing
            }
            if leads { Task { await self.flushInboxWrites() } }
        }
    }

    /// Writes the queued rows in batches until the queue is empty; each row's caller gets its
    /// batch's outcome.
    private func flushInboxWrites() async {
        while true {
            let batch = inboxWrites.withLock { writes in
                let batch = writes.queued.prefix(Self.inboxBatch)
                writes.queued.removeFirst(batch.count)
                if batch.isEmpty { writes.flushing = false }
                return Array(batch)
            }
            guard !batch.isEmpty else { return }
            let values = Array(repeating: "(?, ?, ?)", count: batch.count).joined(separator: ", ")
            let binds = batch.flatMap { [SQLiteData.text($0.user), .text($0.room), .integer(Int($0.seq))] }
            do {
                _ = try await positionsWrite("INSERT INTO read_positions(user, room, seq) VALUES \(values) ON CONFLICT(user, room) DO NOTHING", binds)
                for row in batch { row.done.resume() }
            } catch {
                for row in batch { row.done.resume(throwing: error) }
            }
        }
    }

    public func markRead(user: String, room: String, seq: Int64) async throws {
        _ = try await positionsWrite(
            "INSERT INTO read_positions(user, room, seq) VALUES (?, ?, ?) ON CONFLICT(user, room) DO UPDATE SET seq = max(seq, excluded.seq)",
            [.text(user), .text(room), .integer(Int(seq))]
        )
    }

    public func inbox(user: String) async throws -> [InboxEntry] {
        // One query, one pass over each room's messages after the read position (both counts
        // at once), then each room's newest message.
        let rows = try await reader.query(
            """
            WITH counts AS (
                SELECT p.room AS room, p.seq AS read_seq,
                    COUNT(u.seq) FILTER (WHERE u.user <> ?1 AND u.kind IS NULL AND u.deleted = 0) AS unread,
                    COUNT(u.seq) FILTER (WHERE u.user <> ?1 AND instr(u.mentions, ' ' || ?1 || ' ') > 0) AS mentions
                FROM read_positions p LEFT JOIN messages u ON u.room = p.room AND u.seq > p.seq
                WHERE p.user = ?1 GROUP BY p.room, p.seq
            )
            SELECT c.room AS room, c.read_seq AS read_seq, c.unread AS unread, c.mentions AS mentions,
                (SELECT MAX(seq) FROM messages WHERE room = c.room) AS last_seq,
                m.seq AS seq, m.id AS id, m.user AS user, m.content AS content, m.ts AS ts, m.client_id AS client_id,
                m.kind AS kind, m.target AS target, m.reply_to AS reply_to, m.edited_ts AS edited_ts, m.deleted AS deleted,
                m.reactions AS reactions, m.attachments AS attachments
            FROM counts c
            LEFT JOIN messages m ON m.room = c.room AND m.seq = (SELECT MAX(seq) FROM messages WHERE room = c.room AND kind IS NULL)
            ORDER BY c.room
            """,
            [.text(user)]
        )
        return rows.compactMap { row in
            guard let room = row.column("room")?.string, let readSeq = row.column("read_seq")?.integer else { return nil }
            return InboxEntry(
                room: room, seq: Int64(row.column("last_seq")?.integer ?? 0), lastMessage: Self.message(row), readSeq: Int64(readSeq),
                unread: row.column("unread")?.integer ?? 0, mentions: row.column("mentions")?.integer ?? 0
            )
        }
    }

    private static func maxSeq(room: String, on db: SQLiteConnection) async throws -> Int64 {
        let rows = try await db.query("SELECT MAX(seq) AS seq FROM messages WHERE room = ?", [.text(room)])
        return Int64(rows.first?.column("seq")?.integer ?? 0)
    }

    /// A message row's columns (`m`), as `message(_:)` reads them.
    private static let columns = """
        m.room AS room, m.seq AS seq, m.id AS id, m.user AS user, m.content AS content, m.ts AS ts, m.client_id AS client_id,
        m.kind AS kind, m.target AS target, m.reply_to AS reply_to, m.edited_ts AS edited_ts, m.deleted AS deleted,
        m.reactions AS reactions, m.until_ts AS until_ts, m.attachments AS attachments
        """

    /// The columns and the join that read the messages `rows` (a query) selects, with the quote
    /// of the message each answers: the page is cut first, then only its rows are joined. The
    /// index is named: without statistics SQLite scanned the room's primary key range for each
    /// row instead (7 ms against 0.2 ms for a page of a room of 4,600 rows).
    private static func quotedColumns(from rows: String) -> String {
        """
        \(columns), q.id AS q_id, q.user AS q_user, q.content AS q_content, q.deleted AS q_deleted
        FROM (\(rows)) AS m LEFT JOIN messages q INDEXED BY messages_id ON m.reply_to IS NOT NULL AND q.room = m.room AND q.id = m.reply_to
        """
    }

    private static func message(_ row: SQLiteRow) -> Message? {
        guard let room = row.column("room")?.string, let seq = row.column("seq")?.integer,
            let id = row.column("id")?.string, let user = row.column("user")?.string,
            let content = row.column("content")?.string, let ts = row.column("ts")?.integer
        else { return nil }
        var message = Message(
            id: id, room: room, seq: Int64(seq), user: user, content: content,
            timestamp: Timestamp(milliseconds: Int64(ts)), clientId: row.column("client_id")?.string,
            kind: row.column("kind")?.string.flatMap(MessageKind.init(rawValue:)) ?? .message,
            target: row.column("target")?.string, replyTo: row.column("reply_to")?.string
        )
        message.edited = row.column("edited_ts")?.integer.map { Timestamp(milliseconds: Int64($0)) }
        message.deleted = row.column("deleted")?.integer == 1
        message.reactions = Reaction.parse(row.column("reactions")?.string)
        message.until = row.column("until_ts")?.integer.map { Timestamp(milliseconds: Int64($0)) }
        message.attachments = Attachment.parse(row.column("attachments")?.string, of: message)
        if message.replyTo != nil, let quoteID = row.column("q_id")?.string, let quoteUser = row.column("q_user")?.string {
            var answered = Message(
                id: quoteID, room: room, seq: 0, user: quoteUser, content: row.column("q_content")?.string ?? "",
                timestamp: message.timestamp, clientId: nil
            )
            answered.deleted = row.column("q_deleted")?.integer == 1
            message.quote = Quote(of: answered)
        }
        return message
    }
}

// MARK: Webhook outbox (written on the read positions' connection, never behind a commit)

extension SQLiteMessageStore: WebhookOutbox {
    public func selectWebhooks(_ selection: WebhookSelection) {
        webhookSelection.withLock { $0 = selection }
    }

    public func enqueueWebhooks(_ drafts: [WebhookDraft]) async throws {
        var binds: [SQLiteData] = []
        for (target, draft) in webhookSelection.withLock({ $0 })?.rows(drafts) ?? [] {
            binds += [
                .integer(target), .text(draft.room), .text(draft.kind.rawValue), .text(draft.user),
                draft.seq.map { .integer(Int($0)) } ?? .null, .integer(Int(draft.timestamp.milliseconds)),
            ]
        }
        guard !binds.isEmpty else { return }
        let placeholders = Array(repeating: "(?,?,?,?,?,?)", count: binds.count / 6).joined(separator: ",")
        try await positionsWrite("INSERT INTO webhook_outbox(target, room, kind, user, seq, ts) VALUES \(placeholders)", binds)
    }

    public func claimWebhooks(now: Timestamp, leaseUntil: Timestamp, limit: Int, perQueue: Int) async throws -> [WebhookEvent] {
        let rows = try await positionsWrite(
            """
            UPDATE webhook_outbox SET lease_until = ? WHERE id IN (
                SELECT id FROM (
                    SELECT w.id, row_number() OVER (PARTITION BY w.target, w.room ORDER BY w.id) AS n
                    FROM webhook_outbox AS w JOIN (
                        SELECT o.target, o.room FROM (SELECT min(id) AS id FROM webhook_outbox WHERE dead = 0 GROUP BY target, room) AS head
                        JOIN webhook_outbox AS o ON o.id = head.id
                        WHERE o.due_at <= ? AND o.lease_until <= ? ORDER BY o.id LIMIT ?
                    ) AS q ON w.target = q.target AND w.room = q.room
                    WHERE w.dead = 0
                ) WHERE n <= ?)
            RETURNING id, target, room, kind, user, seq, ts, attempts, last_error
            """,
            [
                .integer(Int(leaseUntil.milliseconds)), .integer(Int(now.milliseconds)), .integer(Int(now.milliseconds)), .integer(limit),
                .integer(max(perQueue, 1)),
            ]
        )
        return rows.compactMap(Self.webhookEvent).sorted { $0.id < $1.id }
    }

    public func releaseWebhooks(ids: [Int64]) async throws {
        guard !ids.isEmpty else { return }
        let list = ids.map(String.init).joined(separator: ",")
        try await positionsWrite("UPDATE webhook_outbox SET lease_until = 0 WHERE id IN (\(list))", [])
    }

    public func completeWebhook(id: Int64) async throws {
        try await positionsWrite("DELETE FROM webhook_outbox WHERE id = ?", [.integer(Int(id))])
    }

    public func retryWebhook(id: Int64, at: Timestamp, error: String) async throws {
        try await positionsWrite(
            "UPDATE webhook_outbox SET attempts = attempts + 1, due_at = ?, lease_until = 0, last_error = ? WHERE id = ?",
            [.integer(Int(at.milliseconds)), .text(error), .integer(Int(id))]
        )
    }

    public func deadLetterWebhook(id: Int64, error: String) async throws {
        try await positionsWrite(
            "UPDATE webhook_outbox SET attempts = attempts + 1, dead = 1, lease_until = 0, last_error = ? WHERE id = ?",
            [.text(error), .integer(Int(id))]
        )
    }

    public func deadWebhooks(limit: Int) async throws -> [WebhookEvent] {
        try await reader.query(
            "SELECT id, target, room, kind, user, seq, ts, attempts, last_error FROM webhook_outbox WHERE dead = 1 ORDER BY id LIMIT ?",
            [.integer(limit)]
        ).compactMap(Self.webhookEvent)
    }

    public func reviveWebhook(id: Int64) async throws -> Bool {
        let rows = try await positionsWrite(
            "UPDATE webhook_outbox SET dead = 0, attempts = 0, due_at = 0, lease_until = 0 WHERE id = ? AND dead = 1 RETURNING id",
            [.integer(Int(id))]
        )
        return !rows.isEmpty
    }

    public func webhookBacklog() async throws -> Int {
        try await reader.query("SELECT count(*) AS n FROM webhook_outbox WHERE dead = 0", []).first?.column("n")?.integer ?? 0
    }

    private static func webhookEvent(_ row: SQLiteRow) -> WebhookEvent? {
        guard let id = row.column("id")?.integer, let target = row.column("target")?.integer, let room = row.column("room")?.string,
            let kind = row.column("kind")?.string.flatMap(WebhookKind.init(rawValue:)), let user = row.column("user")?.string,
            let ts = row.column("ts")?.integer, let attempts = row.column("attempts")?.integer
        else { return nil }
        return WebhookEvent(
            id: Int64(id), target: target, kind: kind, room: room, user: user, seq: row.column("seq")?.integer.map(Int64.init),
            timestamp: Timestamp(milliseconds: Int64(ts)), attempts: attempts, lastError: row.column("last_error")?.string
        )
    }
}
