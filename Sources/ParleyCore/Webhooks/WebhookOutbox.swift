/// The room events a backend can hear of by webhook.
public enum WebhookKind: String, Sendable, Hashable, CaseIterable {
    case message
    case edit
    case delete
    /// A reaction added or taken back.
    case reaction
    /// A kick, mute, unmute, ban or unban.
    case moderation
    /// A user's first session in the room joined.
    case join
    /// A user's last session in the room left.
    case leave
    /// A user's read position moved.
    case read

    /// The kind of webhook a stored row of a room is.
    public init(_ kind: MessageKind) {
        switch kind {
        case .message: self = .message
        case .edit: self = .edit
        case .delete: self = .delete
        case .react, .unreact: self = .reaction
        case .kick, .mute, .unmute, .ban, .unban: self = .moderation
        }
    }

    /// Events that are rows of the room's history: their payload is read from the store when
    /// they are sent, so the outbox row is only a reference (room, seq).
    public var isStored: Bool {
        switch self {
        case .message, .edit, .delete, .reaction, .moderation: true
        case .join, .leave, .read: false
        }
    }
}

/// Which events go to how many endpoints: each selected event is one outbox row per endpoint
/// (`target` is the endpoint's index), so that each endpoint has its own retries and order.
public struct WebhookSelection: Sendable, Hashable {
    public var targets: Int
    public var kinds: Set<WebhookKind>

    public init(targets: Int, kinds: Set<WebhookKind> = Set(WebhookKind.allCases)) {
        self.targets = targets
        self.kinds = kinds
    }

    public func selects(_ kind: WebhookKind) -> Bool { targets > 0 && kinds.contains(kind) }

    /// The outbox rows for `items`: one per target and selected item, target by target, each
    /// target's in the items' order (so every target's queues keep it).
    public func rows<Item>(_ items: [Item], kind: (Item) -> WebhookKind) -> [(target: Int, item: Item)] {
        var rows: [(target: Int, item: Item)] = []
        for target in 0..<max(targets, 0) {
            for item in items where kinds.contains(kind(item)) { rows.append((target, item)) }
        }
        return rows
    }

    /// The rows for events that are not rows of history.
    public func rows(_ drafts: [WebhookDraft]) -> [(target: Int, item: WebhookDraft)] {
        rows(drafts, kind: \.kind)
    }
}

/// An event for the outbox that is not a row of history (join, leave, read).
public struct WebhookDraft: Sendable, Hashable {
    public var kind: WebhookKind
    public var room: String
    public var user: String
    /// The read position, for `read`.
    public var seq: Int64?
    public var timestamp: Timestamp

    public init(kind: WebhookKind, room: String, user: String, seq: Int64? = nil, timestamp: Timestamp) {
        self.kind = kind
        self.room = room
        self.user = user
        self.seq = seq
        self.timestamp = timestamp
    }
}

/// One outbox row: an event for one endpoint, until it is delivered (deleted) or its retries
/// are spent (kept as a dead letter).
public struct WebhookEvent: Sendable, Hashable {
    /// Unique in the store and stable across retries: the event id backends de-duplicate by.
    public var id: Int64
    public var target: Int
    public var kind: WebhookKind
    public var room: String
    public var user: String
    /// The row's seq for a stored event; the read position for `read`.
    public var seq: Int64?
    public var timestamp: Timestamp
    /// Attempts made before this one.
    public var attempts: Int
    /// Why the last attempt failed.
    public var lastError: String?

    public init(
        id: Int64, target: Int, kind: WebhookKind, room: String, user: String, seq: Int64?, timestamp: Timestamp, attempts: Int,
        lastError: String? = nil
    ) {
        self.id = id
        self.target = target
        self.kind = kind
        self.room = room
        self.user = user
        self.seq = seq
        self.timestamp = timestamp
        self.attempts = attempts
        self.lastError = lastError
    }
}

/// The durable webhook outbox, kept by the message store. Rows of history (messages, edits,
/// deletions, reactions, moderation) enter it in the same transaction that stores them, so an
/// event is never stored without its webhook, nor the other way round; joins, leaves and reads
/// enter it when they happen.
///
/// Order and exclusivity: rows are numbered in the order they enter; only the oldest live row
/// of each (target, room) may be claimed, and a claim is a lease: no one else claims the row
/// until the lease runs out. So a room's events reach an endpoint in order, each instance of a
/// cluster sends different events, and an instance that dies mid-delivery leaves its rows to
/// be claimed again when their leases run out (at least once).
public protocol WebhookOutbox: Sendable {
    /// From now on, stored rows of the selected kinds enter the outbox with their commit.
    func selectWebhooks(_ selection: WebhookSelection)
    /// Puts events that are not rows of history into the outbox, one row per target.
    func enqueueWebhooks(_ drafts: [WebhookDraft]) async throws
    /// Leases, until `leaseUntil`, the queues of up to `limit` (target, room) pairs whose oldest
    /// live row is due at `now` and not leased: that row and up to `perQueue - 1` rows behind
    /// it, to be sent in order. Oldest first.
    func claimWebhooks(now: Timestamp, leaseUntil: Timestamp, limit: Int, perQueue: Int) async throws -> [WebhookEvent]
    /// Ends the leases of claimed rows that were not attempted (behind one that failed).
    func releaseWebhooks(ids: [Int64]) async throws
    /// The row was delivered: deletes it.
    func completeWebhook(id: Int64) async throws
    /// The attempt failed: counts it, and makes the row due again at `at`.
    func retryWebhook(id: Int64, at: Timestamp, error: String) async throws
    /// The retries are spent: the row becomes a dead letter, and the room's next row is free.
    func deadLetterWebhook(id: Int64, error: String) async throws
    /// Dead letters, oldest first.
    func deadWebhooks(limit: Int) async throws -> [WebhookEvent]
    /// Makes a dead letter live again, due now, with its attempts reset; false when there is
    /// no such dead letter.
    func reviveWebhook(id: Int64) async throws -> Bool
    /// Live rows in the outbox (delivered ones are gone, dead letters are not counted).
    func webhookBacklog() async throws -> Int
}

extension WebhookOutbox {
    /// Each queue's oldest live row only.
    public func claimWebhooks(now: Timestamp, leaseUntil: Timestamp, limit: Int) async throws -> [WebhookEvent] {
        try await claimWebhooks(now: now, leaseUntil: leaseUntil, limit: limit, perQueue: 1)
    }

    /// The outbox rows for a batch's new stored rows, per selected target: (target, row).
    public static func outboxRows(for messages: [Message], selection: WebhookSelection?) -> [(target: Int, message: Message)] {
        selection?.rows(messages) { WebhookKind($0.kind) }.map { ($0.target, $0.item) } ?? []
    }
}

/// What the engine needs of webhooks: the outbox for joins, leaves and reads, what is
/// selected, and a poke for the dispatcher when something entered the outbox.
public struct Webhooks: Sendable {
    public var outbox: any WebhookOutbox
    public var selection: WebhookSelection
    public var notify: @Sendable () -> Void

    public init(outbox: any WebhookOutbox, selection: WebhookSelection, notify: @escaping @Sendable () -> Void) {
        self.outbox = outbox
        self.selection = selection
        self.notify = notify
    }
}

/// A backend's say on a message before it is stored (the synchronous publish hook).
public protocol PublishGate: Sendable {
    /// Returns to let `draft` be stored; throws `forbidden` with the backend's reason to refuse
    /// it, or `unavailable` when the backend did not answer and the hook fails closed.
    func check(_ draft: MessageDraft, attachments: [String]) async throws(ParleyError)
}
