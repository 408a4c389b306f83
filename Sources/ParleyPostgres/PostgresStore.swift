import CoreMetrics
import Logging
import NIOCore
import ParleyCore
import PostgresNIO
import ServiceLifecycle
import Synchronization

/// History in PostgreSQL, shared by every instance of a cluster, with group commit.
///
/// One writer task per instance takes every append queued while its previous transaction ran
/// and commits them together. Inside that transaction it locks the counter row of each room it
/// writes (`room_counters`, in name order, so two instances never deadlock), looks up the
/// batch's `clientId`s, assigns the next seqs from the counter rows, inserts the messages and
/// moves the counters. The row lock is what makes `seq` gapless and unique across instances,
/// and what makes idempotency hold across them: a second instance racing the same
/// `(room, user, clientId)` waits for the first one's commit and then finds its message.
///
/// When PostgreSQL cannot be reached an append fails with `unavailable` within
/// `operationTimeout`; nothing is acknowledged that was not committed. The connection pool
/// reconnects by itself once the server is back.
public final class PostgresStore: MessageStore {
    public struct Configuration: Sendable {
        public var endpoint: PostgresEndpoint
        /// Connections of the pool (the writer uses one at a time; reads share the rest).
        public var maximumConnections = 8
        public var idempotencyWindow: Duration = .seconds(600)
        /// Most appends committed in one transaction.
        public var maxBatch = 512
        /// How long an append or a read may wait (for a connection included) before it fails
        /// with `unavailable`.
        public var operationTimeout: Duration = .seconds(5)
        /// How long start-up keeps retrying to reach the database for its migrations.
        public var startupTimeout: Duration = .seconds(15)
        /// Where the batch-size histogram goes; none when nil.
        public var metricsFactory: (any MetricsFactory)?

        public init(endpoint: PostgresEndpoint) {
            self.endpoint = endpoint
        }

        /// `postgres://user:password@host:port/database` (see `PostgresEndpoint`).
        public init(url: String) throws {
            self.init(endpoint: try PostgresEndpoint(url: url))
        }
    }

    private typealias Pending = AppendQueue.Pending

    let configuration: Configuration
    let client: PostgresClient
    let logger: Logger
    private let queue: AppendQueue
    /// Batches and appends committed so far (for benchmarks).
    public let stats = Mutex<(batches: Int, appends: Int)>((0, 0))
    let webhookSelection = Mutex<WebhookSelection?>(nil)
    private let batchSizes: Recorder?

    private init(configuration: Configuration, logger: Logger) {
        self.configuration = configuration
        self.queue = AppendQueue(maxBatch: configuration.maxBatch)
        self.logger = logger
        var clientConfiguration = configuration.endpoint.clientConfiguration
        clientConfiguration.options.connectTimeout = configuration.operationTimeout
        clientConfiguration.options.maximumConnections = configuration.maximumConnections
        // The pool logs every failed connection attempt at info: too chatty during an outage.
        var poolLogger = logger
        poolLogger.logLevel = max(logger.logLevel, .warning)
        self.client = PostgresClient(configuration: clientConfiguration, backgroundLogger: poolLogger)
        self.batchSizes = configuration.metricsFactory.map { Recorder(label: ParleyMetrics.batchSizeLabel, factory: $0) }
    }

    /// Reaches the database (retrying for up to `startupTimeout`) and brings its schema up to
    /// date. Several instances may start at once: the migrations run under an advisory lock.
    public static func open(_ configuration: Configuration, logger: Logger = Logger(label: "parley.postgres")) async throws -> PostgresStore {
        let deadline = ContinuousClock.now + configuration.startupTimeout
        var attempt = 0
        while true {
            do {
                try await PostgresMigrations.run(configuration.endpoint, connectTimeout: configuration.operationTimeout, logger: logger)
                return PostgresStore(configuration: configuration, logger: logger)
            } catch let error as ParleyPostgresError {
                // A configuration that cannot work (TLS that cannot be set up) is not retried.
                throw ParleyError.unavailable("cannot prepare the PostgreSQL database: \(error)")
            } catch {
                attempt += 1
                guard ContinuousClock.now < deadline else {
                    throw ParleyError.unavailable("cannot prepare the PostgreSQL database: \(String(reflecting: error))")
                }
                logger.warning("PostgreSQL not ready, retrying", metadata: ["error": "\(String(reflecting: error))", "attempt": "\(attempt)"])
                try await Task.sleep(for: .milliseconds(min(200 * attempt, 2000)))
            }
        }
    }

    // MARK: Service

    /// Runs the connection pool and the writer until graceful shutdown; then commits what is
    /// queued and closes the pool.
    public func run() async throws {
        await withDiscardingTaskGroup { group in
            group.addTask { await self.client.run() }
            // Cancelled (another service failed) or shut down: either way, commit what is
            // queued and stop, so that the process can exit.
            await withTaskCancellationOrGracefulShutdownHandler {
                while let batch = await queue.nextBatch() {
                    await commit(batch)
                }
            } onCancelOrGracefulShutdown: {
                self.queue.stop()
            }
            group.cancelAll()
        }
    }

    // MARK: Writing

    public func append(_ draft: MessageDraft) async throws -> AppendResult {
        try await queue.append(draft)
    }

    private func commit(_ batch: [Pending]) async {
        do {
            let drafts = batch.map(\.draft)
            let results = try await withConnection(leaseTimeout: configuration.operationTimeout) { connection in
                try await connection.withTransaction(logger: self.logger) { connection in
                    try await self.writeBatch(drafts, on: connection)
                }
            }
            stats.withLock { $0 = ($0.batches + 1, $0.appends + batch.count) }
            batchSizes?.record(batch.count)
            for (pending, result) in zip(batch, results) { pending.continuation.resume(with: result) }
        } catch {
            logger.error("commit failed", metadata: ["error": "\(String(reflecting: error))", "batch": "\(batch.count)"])
            let failure = ParleyError.unavailable("could not store the message")
            for pending in batch { pending.continuation.resume(throwing: failure) }
        }
    }

    /// The batch's writes: new rows, and the current state of stored messages its changes changed.
    private struct BatchWrites {
        var rows: [Message] = []
        var index: [String: Int] = [:]
        var changed: [String: Message] = [:]
        var deleted: [(room: String, id: String)] = []
        /// Each sender's (or moderated user's) sanction in the batch's rooms, as the batch leaves it.
        var sanctions: [RoomUser: Sanction] = [:]
        var sanctionsChanged: Set<RoomUser> = []
    }

    struct RoomUser: Hashable {
        var room: String
        var user: String
    }

    private func writeBatch(_ drafts: [MessageDraft], on connection: PostgresConnection) async throws -> [Result<AppendResult, ParleyError>] {
        let rooms = Array(Set(drafts.map(\.room)))
        // Lock every counter row of the batch (creating the missing ones) in one order, and
        // read it: DO UPDATE locks the latest committed version of an existing row. Every write
        // to a room's messages takes this lock first, so the rooms' messages hold still too.
        var lastSeqs: [String: Int64] = [:]
        let counters = try await connection.query(
            """
            INSERT INTO room_counters AS c (room, seq)
            SELECT r, 0 FROM unnest(\(rooms)::text[]) AS r ORDER BY r COLLATE "C"
            ON CONFLICT (room) DO UPDATE SET seq = c.seq
            RETURNING room, seq
            """,
            logger: logger
        )
        for try await (room, seq) in counters.decode((String, Int64).self) { lastSeqs[room] = seq }

        // Only now, with the rooms locked, is a concurrent commit of the same clientId visible.
        var known = try await recentClientIds(for: drafts, on: connection)
        var results: [Result<AppendResult, ParleyError>] = []
        results.reserveCapacity(drafts.count)
        var writes = BatchWrites()
        writes.sanctions = try await sanctions(for: drafts, on: connection)
        func nextSeq(_ room: String) -> Int64 {
            let seq = (lastSeqs[room] ?? 0) + 1
            lastSeqs[room] = seq
            return seq
        }
        for draft in drafts {
            let key = IdempotencyKey(draft)
            if let key, let original = known[key],
                original.timestamp.milliseconds >= draft.timestamp.milliseconds - configuration.idempotencyWindow.milliseconds
            {
                var target: Message?
                if let id = original.target { target = try await current(id, room: original.room, writes: writes, on: connection) }
                results.append(.success(AppendResult(message: original, duplicate: true, target: target)))
                continue
            }
            do {
                let result: AppendResult
                let sanctionKey = RoomUser(room: draft.room, user: draft.sanctionedUser)
                let sanction = try draft.checked(against: writes.sanctions[sanctionKey])
                if draft.moderation != nil {
                    writes.sanctions[sanctionKey] = sanction
                    writes.sanctionsChanged.insert(sanctionKey)
                    result = AppendResult(message: draft.stored(seq: nextSeq(draft.room)), duplicate: false)
                } else if let change = draft.change {
                    let outcome = try change.apply(draft, to: try await current(change.target, room: draft.room, writes: writes, on: connection))
                    result = AppendResult.change(outcome) { nextSeq(draft.room) }
                    if !result.duplicate, let target = result.target {
                        if let index = writes.index[target.id] { writes.rows[index] = target } else { writes.changed[target.id] = target }
                        if target.deleted {
                            writes.deleted.append((target.room, target.id))
                            for i in writes.rows.indices where writes.rows[i].kind == .edit && writes.rows[i].target == target.id {
                                writes.rows[i].content = ""
                            }
                        }
                    }
                } else {
                    var answered: Message?
                    if let replyTo = draft.replyTo {
                        answered = try await current(replyTo, room: draft.room, writes: writes, on: connection)
                        try Message.checkReplyTarget(answered, id: replyTo, room: draft.room)
                    }
                    result = AppendResult(message: draft.stored(seq: nextSeq(draft.room)).quoting(answered), duplicate: false)
                }
                if !result.duplicate {
                    var row = result.message
                    row.quote = nil
                    writes.index[row.id] = writes.rows.count
                    writes.rows.append(row)
                    if let key { known[key] = row }
                }
                results.append(.success(result))
            } catch let error as ParleyError {
                results.append(.failure(error))
            }
        }
        let rows = writes.rows
        guard !rows.isEmpty else { return results }
        let touched = Array(Set(rows.map(\.room)))
        // The rows and the counters in one statement (one round trip).
        try await connection.query(
            """
            WITH inserted AS (
                INSERT INTO messages(room, seq, id, "user", content, ts, client_id, mentions, kind, target, reply_to, edited_ts, deleted, reactions, until_ts, attachments)
                SELECT room, seq, id, u, content, ts, NULLIF(client_id, ''), NULLIF(mentions, ''), NULLIF(kind, ''), NULLIF(target, ''),
                    NULLIF(reply_to, ''), NULLIF(edited_ts, 0), deleted, NULLIF(reactions, ''), NULLIF(until_ts, 0), NULLIF(attachments, '')
                FROM unnest(\(rows.map(\.room))::text[], \(rows.map(\.seq))::int8[], \(rows.map(\.id))::text[],
                    \(rows.map(\.user))::text[], \(rows.map(\.content))::text[], \(rows.map(\.timestamp.milliseconds))::int8[],
                    \(rows.map { $0.clientId ?? "" })::text[], \(rows.map { $0.storedMentions ?? "" })::text[],
                    \(rows.map { $0.kind == .message ? "" : $0.kind.rawValue })::text[], \(rows.map { $0.target ?? "" })::text[],
                    \(rows.map { $0.replyTo ?? "" })::text[], \(rows.map { $0.edited?.milliseconds ?? 0 })::int8[],
                    \(rows.map(\.deleted))::bool[], \(rows.map { Reaction.stored($0.reactions) ?? "" })::text[],
                    \(rows.map { $0.until?.milliseconds ?? 0 })::int8[], \(rows.map { Attachment.stored($0.attachments) ?? "" })::text[])
                    AS v(room, seq, id, u, content, ts, client_id, mentions, kind, target, reply_to, edited_ts, deleted, reactions, until_ts, attachments)
            )
            UPDATE room_counters AS c SET seq = v.seq
            FROM unnest(\(touched)::text[], \(touched.map { lastSeqs[$0]! })::int8[]) AS v(room, seq)
            WHERE c.room = v.room
            """,
            logger: logger
        )
        let outbox = Self.outboxRows(for: rows, selection: webhookSelection.withLock { $0 })
        if !outbox.isEmpty {
            // In the commit: the event exists exactly when its row does. Under the rooms'
            // counter locks, so a room's rows are numbered in the order they commit.
            try await connection.query(
                """
                INSERT INTO webhook_outbox(target, room, kind, user_id, seq, ts)
                SELECT * FROM unnest(\(outbox.map { $0.target })::int4[], \(outbox.map(\.message.room))::text[],
                    \(outbox.map { WebhookKind($0.message.kind).rawValue })::text[], \(outbox.map(\.message.user))::text[],
                    \(outbox.map(\.message.seq))::int8[], \(outbox.map(\.message.timestamp.milliseconds))::int8[])
                """,
                logger: logger
            )
        }
        for message in writes.changed.values {
            try await connection.query(
                """
                UPDATE messages SET content = \(message.content), edited_ts = \(message.edited?.milliseconds), deleted = \(message.deleted),
                    reactions = \(Reaction.stored(message.reactions)), mentions = \(message.storedMentions),
                    attachments = \(Attachment.stored(message.attachments))
                WHERE room = \(message.room) AND seq = \(message.seq)
                """,
                logger: logger
            )
        }
        for (room, id) in writes.deleted {
            try await connection.query("UPDATE messages SET content = '' WHERE room = \(room) AND target = \(id) AND kind = 'edit'", logger: logger)
        }
        for key in writes.sanctionsChanged {
            guard let sanction = writes.sanctions[key] else {
                try await connection.query("DELETE FROM sanctions WHERE room = \(key.room) AND user_id = \(key.user)", logger: logger)
                continue
            }
            try await connection.query(
                """
                INSERT INTO sanctions(room, user_id, muted_until, mute_reason, banned_until, ban_reason)
                VALUES (\(key.room), \(key.user), \(sanction.mutedUntil?.milliseconds), \(sanction.muteReason),
                    \(sanction.bannedUntil?.milliseconds), \(sanction.banReason))
                ON CONFLICT (room, user_id) DO UPDATE SET muted_until = EXCLUDED.muted_until, mute_reason = EXCLUDED.mute_reason,
                    banned_until = EXCLUDED.banned_until, ban_reason = EXCLUDED.ban_reason
                """,
                logger: logger
            )
        }
        return results
    }

    /// The sanctions of the batch's senders (and moderated users) in its rooms: one query.
    private func sanctions(for drafts: [MessageDraft], on connection: PostgresConnection) async throws -> [RoomUser: Sanction] {
        let keys = Array(Set(drafts.map { RoomUser(room: $0.room, user: $0.sanctionedUser) }))
        let rows = try await connection.query(
            """
            SELECT s.room, s.user_id, s.muted_until, s.mute_reason, s.banned_until, s.ban_reason
            FROM unnest(\(keys.map(\.room))::text[], \(keys.map(\.user))::text[]) AS k(room, u)
            JOIN sanctions s ON s.room = k.room AND s.user_id = k.u
            """,
            logger: logger
        )
        var found: [RoomUser: Sanction] = [:]
        for try await (room, user, mutedUntil, muteReason, bannedUntil, banReason) in rows.decode((String, String, Int64?, String, Int64?, String).self) {
            found[RoomUser(room: room, user: user)] = Sanction(
                mutedUntil: mutedUntil.map(Timestamp.init(milliseconds:)), muteReason: muteReason,
                bannedUntil: bannedUntil.map(Timestamp.init(milliseconds:)), banReason: banReason
            )
        }
        return found
    }

    public func sharedSecret(named name: String) async throws -> [UInt8] {
        let fresh = ByteBuffer(bytes: (0..<32).map { _ in UInt8.random(in: 0...255) })
        try await write {
            try await self.client.query("INSERT INTO secrets(name, value) VALUES (\(name), \(fresh)) ON CONFLICT (name) DO NOTHING", logger: self.logger)
        }
        return try await read {
            let rows = try await self.client.query("SELECT value FROM secrets WHERE name = \(name)", logger: self.logger)
            for try await value in rows.decode(ByteBuffer.self) { return Array(value.readableBytesView) }
            throw ParleyError.unavailable("no secret '\(name)'")
        }
    }

    public func sanction(room: String, user: String) async throws -> Sanction? {
        try await read {
            let rows = try await self.client.query(
                "SELECT muted_until, mute_reason, banned_until, ban_reason FROM sanctions WHERE room = \(room) AND user_id = \(user)",
                logger: self.logger
            )
            for try await (mutedUntil, muteReason, bannedUntil, banReason) in rows.decode((Int64?, String, Int64?, String).self) {
                return Sanction(
                    mutedUntil: mutedUntil.map(Timestamp.init(milliseconds:)), muteReason: muteReason,
                    bannedUntil: bannedUntil.map(Timestamp.init(milliseconds:)), banReason: banReason
                )
            }
            return nil
        }
    }

    /// Message `id` of `room` as the batch leaves it so far (without its quote).
    private func current(_ id: String, room: String, writes: BatchWrites, on connection: PostgresConnection) async throws -> Message? {
        if let index = writes.index[id] { return writes.rows[index] }
        if let changed = writes.changed[id] { return changed }
        let rows = try await connection.query("SELECT \(unescaped: Self.columns) FROM messages m WHERE m.room = \(room) AND m.id = \(id)", logger: logger)
        return try await Self.messages(rows).first
    }

    /// The stored messages whose `(room, user, clientId)` a draft of the batch reuses within
    /// the idempotency window: one query for the whole batch.
    private func recentClientIds(for drafts: [MessageDraft], on connection: PostgresConnection) async throws -> [IdempotencyKey: Message] {
        let keyed = drafts.filter { $0.clientId != nil }
        guard let oldest = keyed.map(\.timestamp.milliseconds).min() else { return [:] }
        let since = oldest - configuration.idempotencyWindow.milliseconds
        let rows = try await connection.query(
            """
            SELECT \(unescaped: Self.columns)
            FROM unnest(\(keyed.map(\.room))::text[], \(keyed.map(\.user))::text[], \(keyed.map { $0.clientId! })::text[])
                AS k(room, u, client_id)
            JOIN messages AS m ON m.room = k.room AND m."user" = k.u AND m.client_id = k.client_id
            WHERE m.ts >= \(since) ORDER BY m.seq
            """,
            logger: logger
        )
        var known: [IdempotencyKey: Message] = [:]
        for message in try await Self.messages(rows) {
            if let key = IdempotencyKey(message) { known[key] = message }
        }
        return known
    }

    // MARK: Reading

    public func history(room: String, query: HistoryQuery) async throws -> HistoryPage {
        guard let (lower, upper) = query.seqRange else { return HistoryPage(messages: [], hasMore: false) }
        let order = query.pagesForward ? "ASC" : "DESC"
        let limit = query.limit + 1
        var messages = try await read {
            let rows = try await self.client.query(
                """
                SELECT \(unescaped: Self.quotedColumns)
                WHERE m.room = \(room) AND m.seq > \(lower) AND m.seq < \(upper) ORDER BY m.seq \(unescaped: order) LIMIT \(limit)
                """,
                logger: self.logger
            )
            return try await Self.messages(rows)
        }
        let hasMore = messages.count > query.limit
        if hasMore { messages.removeLast() }
        if !query.pagesForward { messages.reverse() }
        return HistoryPage(messages: messages, hasMore: hasMore)
    }

    public func lastSeq(room: String) async throws -> Int64 {
        try await read {
            let rows = try await self.client.query("SELECT seq FROM room_counters WHERE room = \(room)", logger: self.logger)
            for try await seq in rows.decode(Int64.self) { return seq }
            return 0
        }
    }

    public func rooms() async throws -> [(room: String, seq: Int64)] {
        try await read {
            let rows = try await self.client.query(
                #"SELECT room, seq FROM room_counters WHERE seq > 0 ORDER BY room COLLATE "C""#, logger: self.logger
            )
            var result: [(room: String, seq: Int64)] = []
            for try await (room, seq) in rows.decode((String, Int64).self) { result.append((room, seq)) }
            return result
        }
    }

    // MARK: Search

    public func search(terms: [String], before: String?, limit: Int) async throws -> [Message] {
        guard !terms.isEmpty else { return [] }
        // Each word a lexeme of the query, quoted: the user's text is never query syntax.
        let query = terms.map { "'" + $0.filter { $0 != "'" && $0 != "\\" } + "'" }.joined(separator: " & ")
        let before = before ?? "~"
        return try await read {
            let rows = try await self.client.query(
                """
                SELECT \(unescaped: Self.quotedColumns)
                WHERE m.search @@ to_tsquery('simple', \(query)) AND m.id COLLATE "C" < \(before) AND m.kind IS NULL AND NOT m.deleted
                ORDER BY m.id COLLATE "C" DESC LIMIT \(limit)
                """,
                logger: self.logger
            )
            return try await Self.messages(rows)
        }
    }

    // MARK: Read positions

    // MARK: Web Push

    public func addPushSubscription(_ subscription: PushSubscription) async throws {
        let (endpoint, user) = (subscription.endpoint, subscription.user)
        let (key, auth) = (ByteBuffer(bytes: subscription.p256dh), ByteBuffer(bytes: subscription.auth))
        let now = Timestamp.now.milliseconds
        try await write {
            try await self.client.query(
                """
                INSERT INTO push_subscriptions(endpoint, user_id, p256dh, auth, created_ts) VALUES (\(endpoint), \(user), \(key), \(auth), \(now))
                ON CONFLICT (endpoint) DO UPDATE SET user_id = EXCLUDED.user_id, p256dh = EXCLUDED.p256dh, auth = EXCLUDED.auth,
                    created_ts = EXCLUDED.created_ts
                """,
                logger: self.logger
            )
        }
    }

    public func removePushSubscription(endpoint: String, user: String?) async throws -> Bool {
        try await read {
            let rows = if let user {
                try await self.client.query(
                    "DELETE FROM push_subscriptions WHERE endpoint = \(endpoint) AND user_id = \(user) RETURNING endpoint", logger: self.logger
                )
            } else {
                try await self.client.query("DELETE FROM push_subscriptions WHERE endpoint = \(endpoint) RETURNING endpoint", logger: self.logger)
            }
            for try await _ in rows.decode(String.self) { return true }
            return false
        }
    }

    public func pushSubscriptions(user: String) async throws -> [PushSubscription] {
        try await read {
            let rows = try await self.client.query(
                "SELECT endpoint, p256dh, auth FROM push_subscriptions WHERE user_id = \(user) ORDER BY created_ts, endpoint",
                logger: self.logger
            )
            var found: [PushSubscription] = []
            for try await (endpoint, key, auth) in rows.decode((String, ByteBuffer, ByteBuffer).self) {
                found.append(PushSubscription(user: user, endpoint: endpoint, p256dh: Array(key.readableBytesView), auth: Array(auth.readableBytesView)))
            }
            return found
        }
    }

    public func pushMutes(user: String) async throws -> Set<String> {
        try await read {
            let rows = try await self.client.query("SELECT room FROM push_mutes WHERE user_id = \(user)", logger: self.logger)
            var rooms: Set<String> = []
            for try await room in rows.decode(String.self) { rooms.insert(room) }
            return rooms
        }
    }

    public func setPushMutes(user: String, rooms: Set<String>) async throws {
        let list = rooms.sorted()
        try await write {
            // One statement: the deletion and the insertion commit together.
            try await self.client.query(
                """
                WITH removed AS (DELETE FROM push_mutes WHERE user_id = \(user) AND NOT (room = ANY(\(list))))
                INSERT INTO push_mutes(user_id, room) SELECT \(user), unnest(\(list)::text[]) ON CONFLICT DO NOTHING
                """,
                logger: self.logger
            )
        }
    }

    public func addToInbox(user: String, room: String, readSeq: Int64) async throws {
        try await write {
            try await self.client.query(
                "INSERT INTO read_positions(user_id, room, seq) VALUES (\(user), \(room), \(readSeq)) ON CONFLICT (user_id, room) DO NOTHING",
                logger: self.logger
            )
        }
    }

    public func markRead(user: String, room: String, seq: Int64) async throws {
        try await write {
            try await self.client.query(
                """
                INSERT INTO read_positions(user_id, room, seq) VALUES (\(user), \(room), \(seq))
                ON CONFLICT (user_id, room) DO UPDATE SET seq = GREATEST(read_positions.seq, EXCLUDED.seq)
                """,
                logger: self.logger
            )
        }
    }

    public func inbox(user: String) async throws -> [InboxEntry] {
        try await read {
            let rows = try await self.client.query(
                """
                WITH counts AS (
                    SELECT p.room, p.seq,
                        COUNT(u.seq) FILTER (WHERE u."user" <> \(user) AND u.kind IS NULL AND NOT u.deleted) AS unread,
                        COUNT(u.seq) FILTER (WHERE u."user" <> \(user) AND position(' ' || \(user) || ' ' IN u.mentions) > 0) AS mentions
                    FROM read_positions p LEFT JOIN messages u ON u.room = p.room AND u.seq > p.seq
                    WHERE p.user_id = \(user) GROUP BY p.room, p.seq
                )
                SELECT k.room AS inbox_room, k.seq AS read_seq, k.unread, k.mentions, COALESCE(c.seq, 0) AS last_seq, \(unescaped: Self.columns)
                FROM counts k
                LEFT JOIN room_counters c ON c.room = k.room
                LEFT JOIN LATERAL (
                    SELECT * FROM messages WHERE room = k.room AND kind IS NULL ORDER BY seq DESC LIMIT 1
                ) m ON true
                ORDER BY k.room COLLATE "C"
                """,
                logger: self.logger
            )
            var entries: [InboxEntry] = []
            for try await row in rows {
                let columns = row.makeRandomAccess()
                entries.append(InboxEntry(
                    room: try columns["inbox_room"].decode(String.self), seq: try columns["last_seq"].decode(Int64.self),
                    lastMessage: try Self.message(columns), readSeq: try columns["read_seq"].decode(Int64.self),
                    unread: Int(try columns["unread"].decode(Int64.self)), mentions: Int(try columns["mentions"].decode(Int64.self))
                ))
            }
            return entries
        }
    }

    /// A small write (a read position) with the operation timeout, as `unavailable` when it fails.
    func write(_ body: @escaping @Sendable () async throws -> Void) async throws {
        do {
            try await withTimeout(configuration.operationTimeout, body)
        } catch {
            logger.debug("write failed", metadata: ["error": "\(String(reflecting: error))"])
            throw ParleyError.unavailable("storage is unavailable; retry later")
        }
    }

    /// Runs `body` on a pooled connection. Only the wait for a connection is bounded: once
    /// `body` started, its outcome is awaited, so a commit that went through is never reported
    /// as failed because a timer fired meanwhile. (A connection lost during COMMIT still
    /// leaves the outcome unknown; a retry with the same clientId then finds the message.)
    func withConnection<T: Sendable>(
        leaseTimeout: Duration, _ body: @escaping @Sendable (PostgresConnection) async throws -> T
    ) async throws -> T {
        let lease = LeaseState()
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask {
                try await self.client.withConnection { connection in
                    guard lease.start() else { throw TimeoutError(timeout: leaseTimeout) }
                    return try await body(connection)
                }
            }
            group.addTask {
                try await Task.sleep(for: leaseTimeout)
                return nil
            }
            while let result = try await group.next() {
                if let value = result {
                    group.cancelAll()
                    return value
                }
                if lease.timeOut() {
                    group.cancelAll()
                    throw TimeoutError(timeout: leaseTimeout)
                }
            }
            throw TimeoutError(timeout: leaseTimeout)
        }
    }

    /// Runs a read with the operation timeout, as `unavailable` when it fails.
    func read<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
        do {
            return try await withTimeout(configuration.operationTimeout, body)
        } catch {
            logger.debug("read failed", metadata: ["error": "\(String(reflecting: error))"])
            throw ParleyError.unavailable("history is unavailable")
        }
    }

    /// A message row's columns (`m`), as `message(_:)` reads them.
    private static let columns = """
        m.room, m.seq, m.id, m."user", m.content, m.ts, m.client_id, m.kind, m.target, m.reply_to, m.edited_ts, m.deleted, m.reactions,
        m.until_ts, m.attachments
        """

    /// The columns and the join that read messages with the quote of the message each answers.
    private static let quotedColumns = """
        \(columns), q.id AS q_id, q."user" AS q_user, q.content AS q_content, q.deleted AS q_deleted
        FROM messages m LEFT JOIN messages q ON m.reply_to IS NOT NULL AND q.room = m.room AND q.id = m.reply_to
        """

    private static func messages(_ rows: PostgresRowSequence) async throws -> [Message] {
        var messages: [Message] = []
        for try await row in rows {
            if let message = try message(row.makeRandomAccess()) { messages.append(message) }
        }
        return messages
    }

    /// The message of a row with `columns` (and the quote's, when selected); nil when the
    /// columns are NULL (an outer join found none).
    private static func message(_ row: PostgresRandomAccessRow) throws -> Message? {
        guard let id = try row["id"].decode(String?.self) else { return nil }
        let room = try row["room"].decode(String.self)
        var message = Message(
            id: id, room: room, seq: try row["seq"].decode(Int64.self), user: try row["user"].decode(String.self),
            content: try row["content"].decode(String.self), timestamp: Timestamp(milliseconds: try row["ts"].decode(Int64.self)),
            clientId: try row["client_id"].decode(String?.self),
            kind: try row["kind"].decode(String?.self).flatMap(MessageKind.init(rawValue:)) ?? .message,
            target: try row["target"].decode(String?.self), replyTo: try row["reply_to"].decode(String?.self)
        )
        message.edited = try row["edited_ts"].decode(Int64?.self).map(Timestamp.init(milliseconds:))
        message.deleted = try row["deleted"].decode(Bool.self)
        message.reactions = Reaction.parse(try row["reactions"].decode(String?.self))
        message.until = try row["until_ts"].decode(Int64?.self).map(Timestamp.init(milliseconds:))
        message.attachments = Attachment.parse(try row["attachments"].decode(String?.self), of: message)
        if message.replyTo != nil, row.contains("q_id"), let quoteID = try row["q_id"].decode(String?.self) {
            var answered = Message(
                id: quoteID, room: room, seq: 0, user: try row["q_user"].decode(String.self),
                content: try row["q_content"].decode(String.self), timestamp: message.timestamp, clientId: nil
            )
            answered.deleted = try row["q_deleted"].decode(Bool.self)
            message.quote = Quote(of: answered)
        }
        return message
    }
}


/// Whether a connection was leased before the lease timeout: whichever happens first wins.
final class LeaseState: Sendable {
    private enum State { case waiting, started, timedOut }
    private let state = Mutex(State.waiting)

    /// The connection arrived: true when the work may start.
    func start() -> Bool {
        state.withLock { state in
            guard state == .waiting else { return false }
            state = .started
            return true
        }
    }

    /// The timer fired: true when the work had not started (and now never will).
    func timeOut() -> Bool {
        state.withLock { state in
            guard state == .waiting else { return false }
            state = .timedOut
            return true
        }
    }
}

// MARK: Webhook outbox

extension PostgresStore: WebhookOutbox {
    public func selectWebhooks(_ selection: WebhookSelection) {
        webhookSelection.withLock { $0 = selection }
    }

    public func enqueueWebhooks(_ drafts: [WebhookDraft]) async throws {
        let outbox = webhookSelection.withLock({ $0 })?.rows(drafts).map { (target: $0.target, draft: $0.item) } ?? []
        guard !outbox.isEmpty else { return }
        try await write {
            let rows = outbox
            try await self.client.query(
                """
                INSERT INTO webhook_outbox(target, room, kind, user_id, seq, ts)
                SELECT t, r, k, u, NULLIF(s, -1), ts FROM unnest(\(rows.map(\.target))::int4[], \(rows.map(\.draft.room))::text[],
                    \(rows.map(\.draft.kind.rawValue))::text[], \(rows.map(\.draft.user))::text[], \(rows.map { $0.draft.seq ?? -1 })::int8[],
                    \(rows.map(\.draft.timestamp.milliseconds))::int8[]) AS v(t, r, k, u, s, ts)
                """,
                logger: self.logger
            )
        }
    }

    /// `FOR UPDATE SKIP LOCKED` on the queues' heads: instances claiming at the same moment take
    /// different queues instead of waiting for each other; the leases keep them theirs
    /// afterwards (the rows behind a head are reached only through it).
    public func claimWebhooks(now: Timestamp, leaseUntil: Timestamp, limit: Int, perQueue: Int) async throws -> [WebhookEvent] {
        let (now, until, perQueue) = (now.milliseconds, leaseUntil.milliseconds, max(perQueue, 1))
        return try await read {
            let rows = try await self.client.query(
                """
                WITH heads AS (
                    SELECT o.id, o.target, o.room FROM webhook_outbox o
                    WHERE o.id IN (SELECT min(id) FROM webhook_outbox WHERE NOT dead GROUP BY target, room)
                        AND o.due_at <= \(now) AND o.lease_until <= \(now)
                    ORDER BY o.id LIMIT \(limit) FOR UPDATE SKIP LOCKED),
                picked AS (
                    SELECT id FROM (
                        SELECT w.id, row_number() OVER (PARTITION BY w.target, w.room ORDER BY w.id) AS n
                        FROM webhook_outbox w JOIN heads h ON w.target = h.target AND w.room = h.room AND w.id >= h.id
                        WHERE NOT w.dead) s
                    WHERE n <= \(perQueue))
                UPDATE webhook_outbox SET lease_until = \(until) WHERE id IN (SELECT id FROM picked)
                RETURNING id, target, room, kind, user_id, seq, ts, attempts, last_error
                """,
                logger: self.logger
            )
            return try await Self.webhookEvents(rows).sorted { $0.id < $1.id }
        }
    }

    public func releaseWebhooks(ids: [Int64]) async throws {
        guard !ids.isEmpty else { return }
        try await write {
            try await self.client.query("UPDATE webhook_outbox SET lease_until = 0 WHERE id = ANY(\(ids))", logger: self.logger)
        }
    }

    public func completeWebhook(id: Int64) async throws {
        try await write { try await self.client.query("DELETE FROM webhook_outbox WHERE id = \(id)", logger: self.logger) }
    }

    public func retryWebhook(id: Int64, at: Timestamp, error: String) async throws {
        let due = at.milliseconds
        try await write {
            try await self.client.query(
                "UPDATE webhook_outbox SET attempts = attempts + 1, due_at = \(due), lease_until = 0, last_error = \(error) WHERE id = \(id)",
                logger: self.logger
            )
        }
    }

    public func deadLetterWebhook(id: Int64, error: String) async throws {
        try await write {
            try await self.client.query(
                "UPDATE webhook_outbox SET attempts = attempts + 1, dead = true, lease_until = 0, last_error = \(error) WHERE id = \(id)",
                logger: self.logger
            )
        }
    }

    public func deadWebhooks(limit: Int) async throws -> [WebhookEvent] {
        try await read {
            try await Self.webhookEvents(try await self.client.query(
                "SELECT id, target, room, kind, user_id, seq, ts, attempts, last_error FROM webhook_outbox WHERE dead ORDER BY id LIMIT \(limit)",
                logger: self.logger
            ))
        }
    }

    public func reviveWebhook(id: Int64) async throws -> Bool {
        try await read {
            let rows = try await self.client.query(
                "UPDATE webhook_outbox SET dead = false, attempts = 0, due_at = 0, lease_until = 0 WHERE id = \(id) AND dead RETURNING id",
                logger: self.logger
            )
            var found = false
            for try await _ in rows { found = true }
            return found
        }
    }

    public func webhookBacklog() async throws -> Int {
        try await read {
            var count = 0
            for try await n in try await self.client.query("SELECT count(*) FROM webhook_outbox WHERE NOT dead", logger: self.logger).decode(Int.self) {
                count = n
            }
            return count
        }
    }

    private static func webhookEvents(_ rows: PostgresRowSequence) async throws -> [WebhookEvent] {
        var events: [WebhookEvent] = []
        for try await (id, target, room, kind, user, seq, ts, attempts, lastError) in rows.decode(
            (Int64, Int, String, String, String, Int64?, Int64, Int, String?).self
        ) {
            guard let kind = WebhookKind(rawValue: kind) else { continue }
            events.append(WebhookEvent(
                id: id, target: target, kind: kind, room: room, user: user, seq: seq, timestamp: Timestamp(milliseconds: ts),
                attempts: attempts, lastError: lastError
            ))
        }
        return events
    }
}
