/// A stored chat message: the same shape on every transport.
public struct Message: Sendable, Hashable {
    /// Globally unique, lexicographically sortable identifier (a ULID).
    public var id: String
    public var room: String
    /// Position in the room: starts at 1 and grows by exactly 1 per stored message.
    public var seq: Int64
    public var user: String
    public var content: String
    public var timestamp: Timestamp
    /// The sender's idempotency key, echoed when given.
    public var clientId: String?
    /// A message, or a change to the message `target` (an edit, a deletion, a reaction): every
    /// change to a room takes its own `seq`, so resume and ordering cover changes too.
    public var kind: MessageKind = .message
    /// The message a change applies to (its id); nil for a message.
    public var target: String?
    /// The message this one answers (its id), when it is a reply.
    public var replyTo: String?
    /// For a timed mute or ban: when it ends.
    public var until: Timestamp?

    // The message's current state, as history and acks show it (never set on a change).
    /// When its content was last edited.
    public var edited: Timestamp?
    /// Deleted: its content is gone (empty), it keeps its place in the room.
    public var deleted = false
    /// Reactions, in the order each emoji was first used.
    public var reactions: [Reaction] = []
    /// The message `replyTo` names, as it is now (deleted, it quotes nothing).
    public var quote: Quote?
    /// The files it shares (none once deleted).
    public var attachments: [Attachment] = []

    public init(
        id: String, room: String, seq: Int64, user: String, content: String, timestamp: Timestamp, clientId: String?,
        kind: MessageKind = .message, target: String? = nil, replyTo: String? = nil
    ) {
        self.id = id
        self.room = room
        self.seq = seq
        self.user = user
        self.content = content
        self.timestamp = timestamp
        self.clientId = clientId
        self.kind = kind
        self.target = target
        self.replyTo = replyTo
    }
}

/// What a stored row of a room is: a message, or one kind of change to a message.
public enum MessageKind: String, Sendable, Hashable {
    case message
    /// `content` is the target's new content.
    case edit
    /// The target was deleted; `content` is empty.
    case delete
    /// `user` reacted to the target with the emoji in `content`.
    case react
    /// `user` took back their reaction `content`.
    case unreact
    // Moderation: `user` (a moderator) acted on the user `target`; `content` is the reason.
    /// Took the target's sessions out of the room (they may join again).
    case kick
    /// The target may read the room but not post, until `until` (or for good).
    case mute
    case unmute
    /// The target may not join, read or post, until `until` (or for good); their sessions leave.
    case ban
    case unban

    /// A moderation action rather than a change to a message.
    public var isModeration: Bool {
        switch self {
        case .kick, .mute, .unmute, .ban, .unban: true
        case .message, .edit, .delete, .react, .unreact: false
        }
    }
}

/// One emoji on a message and who reacted with it, in the order they did.
public struct Reaction: Sendable, Hashable {
    public var emoji: String
    public var users: [String]

    public init(emoji: String, users: [String]) {
        self.emoji = emoji
        self.users = users
    }

    /// How stores keep a message's reactions in one text column: a line per emoji, the emoji
    /// then its users, separated by spaces (neither may contain white space); nil for none.
    public static func stored(_ reactions: [Reaction]) -> String? {
        reactions.isEmpty ? nil : reactions.map { ([$0.emoji] + $0.users).joined(separator: " ") }.joined(separator: "\n")
    }

    public static func parse(_ stored: String?) -> [Reaction] {
        guard let stored, !stored.isEmpty else { return [] }
        return stored.split(separator: "\n").compactMap { line in
            let parts = line.split(separator: " ").map(String.init)
            guard let emoji = parts.first, parts.count > 1 else { return nil }
            return Reaction(emoji: emoji, users: Array(parts.dropFirst()))
        }
    }
}

/// What a reply shows of the message it answers.
public struct Quote: Sendable, Hashable {
    public static let maxLength = 140

    public var id: String
    public var user: String
    /// The answered message's current content, cut to `maxLength` characters; empty once it
    /// is deleted.
    public var content: String
    public var deleted: Bool

    public init(of message: Message) {
        id = message.id
        user = message.user
        deleted = message.deleted
        content = message.deleted ? "" : String(message.content.prefix(Self.maxLength))
    }
}

/// What a publisher asks the store to append; the store assigns `seq`.
public struct MessageDraft: Sendable, Hashable {
    public var id: String
    public var room: String
    public var user: String
    public var content: String
    public var timestamp: Timestamp
    public var clientId: String?
    /// A change: what it does and to which message (`MessageChange`); nil for a message.
    public var change: MessageChange?
    /// The message a new message answers.
    public var replyTo: String?
    /// A moderation action (`content` is its reason); nil for anything else.
    public var moderation: Moderation?
    /// Sent by a moderator or a backend: may delete others' messages, and posts even when muted.
    public var privileged = false
    /// The files a new message shares, checked and attached (`AttachmentStore.attach`).
    public var attachments: [Attachment] = []

    public init(
        id: String = MessageID.next(), room: String, user: String, content: String, timestamp: Timestamp = .now, clientId: String? = nil,
        change: MessageChange? = nil, replyTo: String? = nil, moderation: Moderation? = nil, privileged: Bool = false
    ) {
        self.id = id
        self.room = room
        self.user = user
        self.content = content
        self.timestamp = timestamp
        self.clientId = clientId
        self.change = change
        self.replyTo = replyTo
        self.moderation = moderation
        self.privileged = privileged
    }

    /// The stored row, for a message or a moderation action (a change's row comes from
    /// `MessageChange.apply`).
    public func stored(seq: Int64) -> Message {
        guard let moderation else {
            var message = Message(id: id, room: room, seq: seq, user: user, content: content, timestamp: timestamp, clientId: clientId, replyTo: replyTo)
            message.attachments = attachments
            return message
        }
        var row = Message(
            id: id, room: room, seq: seq, user: user, content: content, timestamp: timestamp, clientId: clientId,
            kind: moderation.action, target: moderation.user
        )
        row.until = moderation.until
        return row
    }
}
