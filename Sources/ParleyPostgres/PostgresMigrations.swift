import Logging
import NIOPosix
import PostgresNIO

/// The schema, as numbered steps recorded in `parley_migrations`. A step never changes once
/// released; a new one is appended. Every instance runs them at start-up under one advisory
/// lock, so instances starting together apply each step exactly once.
enum PostgresMigrations {
    static let steps: [[String]] = [
        [
            "CREATE TABLE room_counters(room TEXT PRIMARY KEY, seq BIGINT NOT NULL)",
            """
            CREATE TABLE messages(
                room TEXT NOT NULL, seq BIGINT NOT NULL, id TEXT NOT NULL, "user" TEXT NOT NULL,
                content TEXT NOT NULL, ts BIGINT NOT NULL, client_id TEXT,
                PRIMARY KEY (room, seq))
            """,
            #"CREATE INDEX messages_client_id ON messages(room, "user", client_id) WHERE client_id IS NOT NULL"#,
        ],
        [
            // `' alice bob '`: the users a message mentions (`Message.storedMentions`).
            "ALTER TABLE messages ADD COLUMN mentions TEXT",
            "CREATE TABLE read_positions(user_id TEXT NOT NULL, room TEXT NOT NULL, seq BIGINT NOT NULL, PRIMARY KEY (user_id, room))",
        ],
        [
            // Full-text search: the content's words (the `simple` configuration: no stemming,
            // any language), kept by PostgreSQL itself, behind a GIN index.
            "ALTER TABLE messages ADD COLUMN search tsvector GENERATED ALWAYS AS (to_tsvector('simple', content)) STORED",
            "CREATE INDEX messages_search ON messages USING GIN (search)",
            #"CREATE INDEX messages_id ON messages(id COLLATE "C")"#,
        ],
        [
            // Changes (edits, deletions, reactions) are rows too: `kind` (NULL for a message)
            // and `target`; a message's row keeps its current state.
            """
            ALTER TABLE messages ADD COLUMN kind TEXT, ADD COLUMN target TEXT, ADD COLUMN reply_to TEXT,
                ADD COLUMN edited_ts BIGINT, ADD COLUMN deleted BOOLEAN NOT NULL DEFAULT false, ADD COLUMN reactions TEXT
            """,
            "CREATE INDEX messages_room_id ON messages(room, id)",
            "CREATE INDEX messages_target ON messages(room, target) WHERE target IS NOT NULL",
        ],
        [
            // Moderation: a row's `until` (a timed mute or ban), and each room's sanctions.
            "ALTER TABLE messages ADD COLUMN until_ts BIGINT",
            """
            CREATE TABLE sanctions(
                room TEXT NOT NULL, user_id TEXT NOT NULL, muted_until BIGINT, mute_reason TEXT NOT NULL DEFAULT '',
                banned_until BIGINT, ban_reason TEXT NOT NULL DEFAULT '', PRIMARY KEY (room, user_id))
            """,
        ],
        [
            // The files a message shares (`Attachment.stored`).
            "ALTER TABLE messages ADD COLUMN attachments TEXT",
        ],
        [
            // Attachments: metadata, and the bytes in 64 KiB rows by content (SHA-256). An upload
            // in progress writes its rows under `tmp:<id>`; a complete one is in `attachment_blobs`.
            """
            CREATE TABLE attachments(
                id TEXT PRIMARY KEY, room TEXT NOT NULL, user_id TEXT NOT NULL, name TEXT NOT NULL, type TEXT NOT NULL,
                size BIGINT NOT NULL, width INT, height INT, duration INT, digest TEXT NOT NULL, created_ts BIGINT NOT NULL,
                message TEXT, client_id TEXT)
            """,
            "CREATE INDEX attachments_digest ON attachments(digest)",
            "CREATE INDEX attachments_user ON attachments(user_id, created_ts)",
            "CREATE INDEX attachments_message ON attachments(message) WHERE message IS NOT NULL",
            "CREATE TABLE attachment_blobs(digest TEXT PRIMARY KEY, size BIGINT NOT NULL)",
            """
            CREATE TABLE attachment_chunks(
                digest TEXT NOT NULL, index INT NOT NULL, data BYTEA NOT NULL, created_ts BIGINT NOT NULL, PRIMARY KEY (digest, index))
            """,
        ],
        [
            // Random secrets made once and shared by every instance (`sharedSecret`).
            "CREATE TABLE secrets(name TEXT PRIMARY KEY, value BYTEA NOT NULL)",
        ],
        [
            // Web Push: browsers' subscriptions, and the rooms each user muted.
            """
            CREATE TABLE push_subscriptions(
                endpoint TEXT PRIMARY KEY, user_id TEXT NOT NULL, p256dh BYTEA NOT NULL, auth BYTEA NOT NULL, created_ts BIGINT NOT NULL)
            """,
            "CREATE INDEX push_subscriptions_user ON push_subscriptions(user_id, created_ts)",
            "CREATE TABLE push_mutes(user_id TEXT NOT NULL, room TEXT NOT NULL, PRIMARY KEY (user_id, room))",
        ],
        [
            // The webhook outbox (`WebhookOutbox`), shared by every instance: one row per event
            // and endpoint, until delivered (deleted) or dead (kept).
            """
            CREATE TABLE webhook_outbox(
                id BIGSERIAL PRIMARY KEY, target INT NOT NULL, room TEXT NOT NULL, kind TEXT NOT NULL, user_id TEXT NOT NULL,
                seq BIGINT, ts BIGINT NOT NULL, attempts INT NOT NULL DEFAULT 0, due_at BIGINT NOT NULL DEFAULT 0,
                lease_until BIGINT NOT NULL DEFAULT 0, dead BOOLEAN NOT NULL DEFAULT false, last_error TEXT)
            """,
            "CREATE INDEX webhook_outbox_queues ON webhook_outbox(target, room, id) WHERE NOT dead",
        ],
    ]

    /// An arbitrary constant: the advisory lock that serializes migrations.
    static let lockKey = 7_270_001

    static func run(_ endpoint: PostgresEndpoint, connectTimeout: Duration, logger: Logger) async throws {
        let connection = try await PostgresConnection.connect(
            on: MultiThreadedEventLoopGroup.singleton.next(),
            configuration: try endpoint.connectionConfiguration(connectTimeout: connectTimeout),
            id: 0,
            logger: logger
        )
        do {
            try await connection.withTransaction(logger: logger) { connection in
                try await connection.query("SELECT pg_advisory_xact_lock(\(lockKey))", logger: logger)
                try await connection.query(
                    "CREATE TABLE IF NOT EXISTS parley_migrations(version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
                    logger: logger
                )
                var current = 0
                for try await version in try await connection.query("SELECT COALESCE(MAX(version), 0) FROM parley_migrations", logger: logger).decode(Int.self) {
                    current = version
                }
                for (index, statements) in steps.enumerated() where index + 1 > current {
                    for statement in statements { try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger) }
                    try await connection.query("INSERT INTO parley_migrations(version) VALUES (\(index + 1))", logger: logger)
                    logger.info("PostgreSQL schema migrated", metadata: ["version": "\(index + 1)"])
                }
            }
        } catch {
            try? await connection.close()
            throw error
        }
        try await connection.close()
    }
}
