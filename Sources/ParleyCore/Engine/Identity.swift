/// Who is acting, as established by a transport's authentication.
public struct Identity: Sendable, Hashable {
    public var user: String
    /// Rooms this identity may join, post to and read: nil means every room.
    public var rooms: RoomPatterns?
    /// A backend authenticated with an API key: may post as any user and read any room.
    public var isBackend: Bool
    /// A moderator (a token's `roles` claim has `moderator`): may delete any message and kick,
    /// mute and ban users in the rooms it may access.
    public var isModerator = false
    /// When the credential stops being valid (a token's `exp` plus the leeway); nil when it
    /// never expires (open mode, API keys). Long-lived transports end the session then unless
    /// the client refreshes it.
    public var expiresAt: Timestamp?

    public init(user: String, rooms: RoomPatterns? = nil, isBackend: Bool = false, isModerator: Bool = false, expiresAt: Timestamp? = nil) {
        self.user = user
        self.rooms = rooms
        self.isBackend = isBackend
        self.isModerator = isModerator
        self.expiresAt = expiresAt
    }

    /// May moderate the rooms it may access: a moderator, or a backend (the superuser).
    public var mayModerate: Bool { isBackend || isModerator }

    public func isExpired(at now: Timestamp = .now) -> Bool {
        expiresAt.map { $0 <= now } ?? false
    }

    /// Whether this identity may join, read and post to `room`. A direct-message room is
    /// open to its two users only (and backends), and to them only as far as a `rooms` claim
    /// allows (a claim needs a pattern such as `dm:*` for DMs).
    public func mayAccess(_ room: String) -> Bool {
        if isBackend { return true }
        if let (a, b) = DirectRoom.participants(room), user != a, user != b { return false }
        return rooms?.matches(room) ?? true
    }

    /// Refuses an identity whose credential has expired: during the refresh grace a session
    /// may only send `connect` with a fresh token (and `ping`, `leave`).
    func ensureCurrent(at now: Timestamp) throws(ParleyError) {
        guard !isExpired(at: now) else {
            throw ParleyError(.unauthorized, "token expired; send connect with a fresh token")
        }
    }

    /// A backend (API key) turned into the user it acts as, which it must name (`field` says
    /// where, in the error); any other identity as it is.
    public func acting(as user: String?, field: String, limits: Limits) throws(ParleyError) -> Identity {
        guard isBackend else { return self }
        guard let user, !user.isEmpty else { throw ParleyError.badRequest("\(field): required with an API key (the user to act as)") }
        return Identity(user: try Validation.user(user, limits: limits), isBackend: true)
    }

    func authorize(_ room: String, at now: Timestamp) throws(ParleyError) {
        try ensureCurrent(at: now)
        guard mayAccess(room) else { throw ParleyError(.forbidden, "not allowed in room \(room)") }
    }
}

/// Exact room names and `prefix*` patterns.
public struct RoomPatterns: Sendable, Hashable {
    public var exact: Set<String>
    public var prefixes: [String]

    public init(_ patterns: [String]) {
        exact = Set(patterns.filter { !$0.hasSuffix("*") })
        prefixes = patterns.filter { $0.hasSuffix("*") }.map { String($0.dropLast()) }
    }

    public func matches(_ room: String) -> Bool {
        exact.contains(room) || prefixes.contains { room.hasPrefix($0) }
    }
}
