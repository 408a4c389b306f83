import ServiceLifecycle

/// Durable, ordered history of every room.
///
/// Every draft is checked against the room's sanction of its sender (`MessageDraft.checked`,
/// a muted or banned user's post is `forbidden`) inside the transaction that stores it, and a
/// moderation draft (`MessageDraft.moderation`) updates the sanction of the user it names in
/// that transaction: so a mute holds from the next post on, whatever instance it comes through.
///
/// A draft may be a change to a stored message (`MessageDraft.change`): the store decides it
/// with `MessageChange.apply` against the message as stored in the same transaction, stores
/// the change as the room's next row and keeps the message's current state (content, edit
/// time, deletion, reactions) on its own row, which history, search and listings show. A
/// deletion also empties the content of the message's earlier edits, and takes it out of
/// search. A reply (`MessageDraft.replyTo`) must answer a message of the same room; pages and
/// acks show it with the answered message's `quote` as it is when read.
///
/// Guarantees every implementation gives (the shared behavioural suite checks them):
/// - `append` returns only after the message is durably committed; if it throws, nothing was
///   stored and the message must not be delivered.
/// - `seq` is per room, starts at 1 and grows by exactly 1 per stored message, never reused,
///   even with concurrent appends from several processes.
/// - An append whose `(room, user, clientId)` was stored within the idempotency window stores
///   nothing and returns the original message with `duplicate == true`.
/// - Appends that arrive together may be committed together (group commit).
/// - Pages are ascending by `seq`; see `HistoryQuery` for the paging direction.
///
/// Failures are thrown as `ParleyError` with code `unavailable`.
public protocol MessageStore: Service {
    func append(_ draft: MessageDraft) async throws -> AppendResult
    func history(room: String, query: HistoryQuery) async throws -> HistoryPage
    /// The room's last seq, 0 when it has no message.
    func lastSeq(room: String) async throws -> Int64
    /// Every room with at least one message, with its last seq, by name.
    func rooms() async throws -> [(room: String, seq: Int64)]

    /// The random secret called `name`, made once and then the same for every instance that
    /// shares the store (it signs call ids).
    func sharedSecret(named name: String) async throws -> [UInt8]

    /// What `room` holds against `user` (a mute, a ban), as stored; nil for nothing.
    func sanction(room: String, user: String) async throws -> Sanction?

    // MARK: Read positions

    /// Puts `room` in `user`'s list with read position `readSeq`, unless it is there already.
    func addToInbox(user: String, room: String, readSeq: Int64) async throws
    /// Moves `user`'s read position in `room` forward to `seq` (never back), putting the room in
    /// their list if it is not there.
    func markRead(user: String, room: String, seq: Int64) async throws
    /// `user`'s rooms, by name: each room's last message, the user's read position, and how many
    /// later messages by others there are, and how many of those mention the user.
    func inbox(user: String) async throws -> [InboxEntry]

    // MARK: Web Push

    /// Keeps `subscription`, one per endpoint: a browser that subscribes again (new keys, or
    /// now for another user) replaces its earlier subscription.
    func addPushSubscription(_ subscription: PushSubscription) async throws
    /// Deletes the subscription at `endpoint` (only if it is `user`'s, when `user` is given);
    /// true when there was one.
    @discardableResult
    func removePushSubscription(endpoint: String, user: String?) async throws -> Bool
    /// `user`'s subscriptions, oldest first.
    func pushSubscriptions(user: String) async throws -> [PushSubscription]
    /// The rooms whose pushes `user` muted; `PushSettings.everyRoom` mutes them all.
    func pushMutes(user: String) async throws -> Set<String>
    /// Replaces `user`'s muted rooms.
    func setPushMutes(user: String, rooms: Set<String>) async throws

    // MARK: Search

    /// Messages (not changes, not deleted ones) containing every word of `terms` (whole words, any case), newest first, older
    /// than the message `before` (an id) when given; at most `limit`. Callers filter the rooms.
    func search(terms: [String], before: String?, limit: Int) async throws -> [Message]
}

/// What a search for `text` looks for: its words (letters and digits), lowercased, at most 8.
public enum SearchTerms {
    public static func words(_ text: String) -> [String] {
        var words: [String] = []
        for word in tokens(text) where !words.contains(word) {
            words.append(word)
            if words.count == 8 { break }
        }
        return words
    }

    /// Every word of `text`, lowercased.
    public static func tokens(_ text: String) -> [String] {
        text.lowercased().split(whereSeparator: { !($0.isLetter || $0.isNumber) }).map(String.init)
    }
}

/// A room in a user's list.
public struct InboxEntry: Sendable, Hashable {
    public var room: String
    /// The room's last seq (a change counts: it is the position to mark read).
    public var seq: Int64
    /// The room's newest message (not a change); nil while it has none.
    public var lastMessage: Message?
    /// The user's read position: the last seq they read.
    public var readSeq: Int64
    /// Messages (not changes, not deleted ones) after `readSeq` by other users.
    public var unread: Int
    /// Of those, the ones that mention the user (`@user`).
    public var mentions: Int

    public init(room: String, seq: Int64? = nil, lastMessage: Message?, readSeq: Int64, unread: Int, mentions: Int) {
        self.room = room
        self.seq = seq ?? lastMessage?.seq ?? 0
        self.lastMessage = lastMessage
        self.readSeq = readSeq
        self.unread = unread
        self.mentions = mentions
    }
}

extension Message {
    /// The users the message mentions, as stores keep them: `" alice bob "` (so that a user is
    /// found as `" alice "`), nil when there are none (and for changes and deleted messages).
    public var storedMentions: String? {
        guard kind == .message, !deleted else { return nil }
        let users = Mentions.users(in: content, limits: Limits())
        return users.isEmpty ? nil : " " + users.joined(separator: " ") + " "
    }
}

public struct AppendResult: Sendable, Hashable {
    /// The stored row: what is delivered to the room.
    public var message: Message
    /// Nothing was stored and nothing is delivered: the clientId had been used (`message` is
    /// the original), or a change found the message already so.
    public var duplicate: Bool
    /// For a change: the changed message as it is now (what the change's ack shows).
    public var target: Message?

    public init(message: Message, duplicate: Bool, target: Message? = nil) {
        self.message = message
        self.duplicate = duplicate
        self.target = target
    }

    /// What a store answers for `outcome`, the change's stored row getting `seq`.
    public static func change(_ outcome: MessageChange.Outcome, seq: () throws -> Int64) rethrows -> AppendResult {
        switch outcome {
        case .unchanged(let current):
            return AppendResult(message: current, duplicate: true, target: current)
        case .store(var change, let target):
            change.seq = try seq()
            return AppendResult(message: change, duplicate: false, target: target)
        }
    }
}

/// `(room, user, clientId)`: what makes a retry the same message, in every store.
public struct IdempotencyKey: Hashable, Sendable {
    public var room: String
    public var user: String
    public var clientId: String

    public init(room: String, user: String, clientId: String) {
        (self.room, self.user, self.clientId) = (room, user, clientId)
    }

    /// The key of a draft that carries a `clientId`; nil without one.
    public init?(_ draft: MessageDraft) {
        guard let clientId = draft.clientId else { return nil }
        self.init(room: draft.room, user: draft.user, clientId: clientId)
    }

    /// The key of a stored message that carries a `clientId`; nil without one.
    public init?(_ message: Message) {
        guard let clientId = message.clientId else { return nil }
        self.init(room: message.room, user: message.user, clientId: clientId)
    }
}
