import NIOCore
import Synchronization

/// Encodes engine events for one wire format. The hub encodes each event once per encoder and
/// shares the bytes with every session that uses it.
public protocol EventEncoder: AnyObject, Sendable {
    func encode(_ event: ServerEvent) -> ByteBuffer
}

/// One client connection as the engine sees it, whatever its transport.
public final class Session: Sendable, Hashable {
    public let id: String
    /// The user never changes for a session; the rest of the identity may (`refresh`).
    public let user: String
    /// The transport's name, for metrics: `websocket`, `sse`, `grpc`.
    public let transport: String
    public let outbox: Outbox
    public let encoder: any EventEncoder
    /// A watcher receives a room's events but is not a member anyone sees: no presence, no
    /// `join`/`leave` (an anonymous SSE reader, a backend following a room).
    public let isWatcher: Bool
    private let rateLimit: Mutex<TokenBucket>
    private let commandBudget: Mutex<TokenBucket>
    private let joined = Mutex<Set<String>>([])
    private let currentIdentity: Mutex<Identity>

    init(id: String, identity: Identity, transport: String, encoder: any EventEncoder, outbox: Outbox, limits: Limits, now: ContinuousClock.Instant = .now, isWatcher: Bool = false) {
        self.id = id
        self.isWatcher = isWatcher
        self.user = identity.user
        self.currentIdentity = Mutex(identity)
        self.transport = transport
        self.encoder = encoder
        self.outbox = outbox
        self.rateLimit = Mutex(TokenBucket(rate: limits.ratePerSecond, burst: limits.rateBurst, now: now))
        self.commandBudget = Mutex(TokenBucket(rate: limits.commandRatePerSecond, burst: limits.commandBurst, now: now))
    }

    /// Who the session acts as now: a refresh replaces the expiry and the room patterns.
    public var identity: Identity { currentIdentity.withLock { $0 } }

    /// Replaces the identity with a fresh credential's, for the same user only (`forbidden`
    /// otherwise): a connection cannot change who it is.
    public func refresh(_ identity: Identity) throws(ParleyError) {
        guard identity.user == user, !identity.isBackend else {
            throw ParleyError(.forbidden, "a refreshed token must be for the same user (\(user))")
        }
        currentIdentity.withLock { $0 = identity }
    }

    public var rooms: Set<String> { joined.withLock { $0 } }

    public func isMember(of room: String) -> Bool { joined.withLock { $0.contains(room) } }

    /// Adds the room; false when already joined or when the connection holds `limit` rooms.
    func addRoom(_ room: String, limit: Int) throws(ParleyError) -> Bool {
        try joined.withLock { rooms throws(ParleyError) -> Bool in
            if rooms.contains(room) { return false }
            guard rooms.count < limit else {
                throw ParleyError(.tooLarge, "a connection may join at most \(limit) rooms")
            }
            rooms.insert(room)
            return true
        }
    }

    func removeRoom(_ room: String) -> Bool {
        joined.withLock { $0.remove(room) != nil }
    }

    /// The session is in its user's channel (`UserChannel`) until it disconnects.
    private let inUserChannel = Atomic<Bool>(false)

    func setInUserChannel() { inUserChannel.store(true, ordering: .relaxed) }

    /// True once, for a session that was in its user's channel.
    func leaveUserChannel() -> Bool { inUserChannel.exchange(false, ordering: .relaxed) }

    /// Bit 0: the client says it is visible (`Engine.setVisible`); bit 1: the session ended.
    private let visibility = Atomic<UInt8>(0)

    /// Records what the client says; the state to tell presence, nil when nothing changed or
    /// the session ended.
    func setVisible(_ visible: Bool) -> Bool? {
        var current = visibility.load(ordering: .relaxed)
        while true {
            if current & 2 != 0 || (current & 1 != 0) == visible { return nil }
            let (exchanged, original) = visibility.compareExchange(
                expected: current, desired: (current & ~1) | (visible ? 1 : 0), ordering: .relaxed
            )
            if exchanged { return visible }
            current = original
        }
    }

    /// Ends the visibility state: true when the session was visible.
    func endVisibility() -> Bool { visibility.exchange(2, ordering: .relaxed) & 1 != 0 }

    var hasEnded: Bool { visibility.load(ordering: .relaxed) & 2 != 0 }

    func removeAllRooms() -> Set<String> {
        joined.withLock { rooms in
            defer { rooms.removeAll() }
            return rooms
        }
    }

    /// Takes `cost` from the command budget: nil when allowed, else milliseconds to wait.
    func takeCommandTokens(_ cost: Double, now: ContinuousClock.Instant) -> Int? {
        commandBudget.withLock { $0.take(cost, now: now) }
    }

    /// Takes a publish token: nil when allowed, else milliseconds until one is free.
    func takeRateToken(now: ContinuousClock.Instant) -> Int? {
        rateLimit.withLock { $0.take(now: now) }
    }

    /// Queues an event encoded for this session alone (replays, direct replies).
    @discardableResult
    func send(_ event: ServerEvent) -> Bool {
        outbox.enqueue(encoder.encode(event))
    }

    public static func == (lhs: Session, rhs: Session) -> Bool { lhs === rhs }
    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }
}
