/// The limits of the wire protocol. Every one is configurable; the defaults are the spec's.
public struct Limits: Sendable, Hashable {
    /// Longest room name, in characters of `[A-Za-z0-9_.:-]`.
    public var maxRoomLength = 64
    /// Longest user id, in characters of `[A-Za-z0-9_.-]`.
    public var maxUserLength = 32
    /// Longest message content, in Unicode code points after trimming surrounding whitespace.
    public var maxContentLength = 4000
    /// Longest `clientId`, in bytes.
    public var maxClientIdLength = 128
    /// Largest WebSocket frame or HTTP body, in bytes.
    public var maxFrameBytes = 64 * 1024
    /// Per-connection publish rate (token bucket refill per second); 0 turns the limit off.
    public var ratePerSecond: Double = 20
    /// Token bucket capacity.
    public var rateBurst: Double = 40
    /// Publish rate of one user across all of their connections and HTTP calls; nil means
    /// twice the per-connection rate (so 0 there turns this off too); 0 turns it off.
    public var userRatePerSecond: Double?
    /// Capacity of the per-user bucket; nil means twice the per-connection burst.
    public var userRateBurst: Double?
    /// Open WebSocket and SSE connections, all clients together; 0 means no limit.
    public var maxConnections = 0
    /// Open WebSocket and SSE connections from one IP address; 0 means no limit.
    public var maxConnectionsPerIP = 0
    /// History page size bounds and default.
    public var maxHistoryLimit = 100
    public var defaultHistoryLimit = 50
    /// Unsent bytes a connection may have queued before it is cut off as a slow consumer.
    public var maxOutboxBytes = 4 * 1024 * 1024
    /// Consecutive bad frames after which a connection is closed.
    public var maxConsecutiveBadFrames = 50
    /// Rooms one connection may have joined at once.
    public var maxRoomsPerConnection = 100
    /// Commands other than publishing (join, leave, history, presence, connect) one connection
    /// may send per second, and the bucket's capacity; a history page costs more the longer it
    /// is. 0 turns the budget off. Typing and read receipts are coalesced instead.
    public var commandRatePerSecond: Double = 20
    /// Enough for a reconnecting client to rejoin `maxRoomsPerConnection` rooms at once.
    public var commandBurst: Double = 120
    /// Within this window a member's typing and read changes are coalesced: the newest wins.
    public var coalesceWindow: Duration = .milliseconds(500)
    /// How long a `typing: true` lasts unless renewed.
    public var typingTimeout: Duration = .seconds(5)
    /// Users in one page of a presence list (the join ack's, and `presence`'s by default; it
    /// may ask for up to 100): a room with more is paged (`after`). Every joiner of a large
    /// room is sent one page, so this is what a join costs in bytes.
    public var presencePageSize = 50
    /// Above this many users present, a room's joins and leaves go out as one `presence`
    /// update per `presenceUpdateInterval` instead of one event each (filling a room of N is
    /// then O(N) deliveries, not O(N^2)). 0 sends every join and leave one by one.
    public var largeRoomSize = 50
    public var presenceUpdateInterval: Duration = .seconds(1)
    /// How long after sending it an author may edit a message; nil: any time.
    public var editWindow: Duration? = .seconds(24 * 3600)
    /// Most different emoji on one message.
    public var maxReactions = 20
    /// Largest attachment, in bytes.
    public var maxAttachmentBytes: Int64 = 25 * 1024 * 1024
    /// Bytes one user may upload in 24 hours; 0 means no quota.
    public var attachmentQuotaPerDay: Int64 = 1024 * 1024 * 1024
    /// An upload not in a message this long after it ends is deleted.
    public var orphanAttachmentLifetime: Duration = .seconds(3600)
    /// How long a `clientId` is remembered for idempotent retries.
    public var idempotencyWindow: Duration = .seconds(600)

    public init() {}

    /// The per-user publish rate in effect.
    public var effectiveUserRate: (perSecond: Double, burst: Double) {
        (userRatePerSecond ?? 2 * ratePerSecond, userRateBurst ?? 2 * rateBurst)
    }
}
