/// A room event as the engine emits it; transports encode it for their wire.
public enum ServerEvent: Sendable, Hashable {
    case message(Message)
    case join(room: String, user: String, timestamp: Timestamp)
    case leave(room: String, user: String, timestamp: Timestamp)
    case typing(room: String, user: String, typing: Bool)
    case read(room: String, user: String, seq: Int64)
    /// A large room's joins and leaves since the previous update (`Limits.largeRoomSize`).
    case presence(room: String, online: Int, joined: [String], left: [String])
    /// Addressed to a person, not a room: `user` has a new direct message or was mentioned
    /// in `message` (of a room they may not have joined). Reaches every session of the user,
    /// on every instance, through the user's own channel (`UserChannel`).
    case notify(user: String, kind: NotificationKind, message: Message)
    /// `user` read up to `seq` in `room`, on one of their sessions: sent to all of them through
    /// the user's channel (so every device's unread badge follows), on the wire as `read`.
    case ownRead(user: String, room: String, seq: Int64)
    /// A step of a call's signalling, for `signal.to` (one, all or all but one of their
    /// sessions), through the user's channel like `notify`.
    case call(CallSignal)

    public var room: String {
        switch self {
        case .message(let message): message.room
        case .join(let room, _, _), .leave(let room, _, _), .typing(let room, _, _), .read(let room, _, _): room
        case .presence(let room, _, _, _): room
        case .notify(let user, _, _), .ownRead(let user, _, _): UserChannel.room(of: user)
        case .call(let signal): UserChannel.room(of: signal.to)
        }
    }

    /// The user this event is about; join, leave and typing events are not sent back to them.
    var subjectUserIfNotEchoed: String? {
        switch self {
        case .join(_, let user, _), .leave(_, let user, _), .typing(_, let user, _): user
        case .message, .read, .presence, .notify, .ownRead, .call: nil
        }
    }
}

/// Why a person is notified.
public enum NotificationKind: String, Sendable, Hashable {
    /// A message in a direct-message room of theirs, from the other user.
    case direct = "dm"
    /// A message that mentions them (`@user`).
    case mention
}

/// Each user's own channel: an internal room (`~user:<id>`) that every session of the user is
/// in, on every instance, invisible to clients (no client-chosen name contains `~`). Events
/// addressed to a person travel through it like any room event, over the broker in a cluster.
public enum UserChannel {
    public static let prefix = "~user:"

    public static func room(of user: String) -> String { prefix + user }

    public static func isUserChannel(_ room: String) -> Bool { room.hasPrefix(prefix) }
}

/// One page of history, ascending by `seq`.
public struct HistoryPage: Sendable, Hashable {
    public var messages: [Message]
    /// Whether more messages exist in the paging direction.
    public var hasMore: Bool

    public init(messages: [Message], hasMore: Bool) {
        self.messages = messages
        self.hasMore = hasMore
    }
}

/// Which page of a room's history to read.
public struct HistoryQuery: Sendable, Hashable {
    /// Only messages with a seq below this.
    public var before: Int64?
    /// Only messages with a seq above this.
    public var after: Int64?
    public var limit: Int

    public init(before: Int64? = nil, after: Int64? = nil, limit: Int) {
        self.before = before
        self.after = after
        self.limit = limit
    }

    /// With `after` the page starts right above it (paging forward); otherwise it ends right
    /// below `before` or at the newest message (paging backward).
    public var pagesForward: Bool { after != nil }

    /// The open interval of seqs the query selects, `after < seq < before`, or nil when it
    /// holds none. Safe for any pair of values a client can send: a cursor at `Int64.max`
    /// selects nothing instead of overflowing `after + 1`.
    public var seqRange: (after: Int64, before: Int64)? {
        let after = max(after ?? 0, 0)
        let before = before ?? .max
        // `before - after` cannot overflow once `after >= 0`.
        guard before > after, before - after > 1 else { return nil }
        return (after, before)
    }
}

/// A user present in a room.
public struct PresenceEntry: Sendable, Hashable {
    public var user: String
    /// When the user's first current session entered the room.
    public var since: Timestamp

    public init(user: String, since: Timestamp) {
        self.user = user
        self.since = since
    }
}

public struct RoomSummary: Sendable, Hashable {
    public var room: String
    public var seq: Int64
    public var online: Int

    public init(room: String, seq: Int64, online: Int) {
        self.room = room
        self.seq = seq
        self.online = online
    }
}
