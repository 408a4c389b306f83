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

    public init(id: String, room: String, seq: Int64, user: String, content: String, timestamp: Timestamp, clientId: String?) {
        self.id = id
        self.room = room
        self.seq = seq
        self.user = user
        self.content = content
        self.timestamp = timestamp
        self.clientId = clientId
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

    public init(id: String = MessageID.next(), room: String, user: String, content: String, timestamp: Timestamp = .now, clientId: String? = nil) {
        self.id = id
        self.room = room
        self.user = user
        self.content = content
        self.timestamp = timestamp
        self.clientId = clientId
    }

    public func stored(seq: Int64) -> Message {
        Message(id: id, room: room, seq: seq, user: user, content: content, timestamp: timestamp, clientId: clientId)
    }
}
