import ServiceLifecycle
import Synchronization

/// History kept in memory: for tests and throwaway servers. Not durable.
public final class MemoryMessageStore: MessageStore {
    private struct Room {
        /// Every row, at index seq - 1; a message's row holds its current state.
        var messages: [Message] = []
        /// Each message's index in `messages`, by id.
        var index: [String: Int] = [:]

        func message(_ id: String) -> Message? { index[id].map { messages[$0] } }

        /// `message` with the quote of the message it answers, as it is now.
        func current(_ message: Message) -> Message {
            guard let replyTo = message.replyTo else { return message }
            return message.quoting(self.message(replyTo))
        }
    }

    private struct State {
        var rooms: [String: Room] = [:]
        var clientIds: [IdempotencyKey: Message] = [:]
        /// Read positions by user, then room.
        var read: [String: [String: Int64]] = [:]
        /// Sanctions by room, then user.
        var sanctions: [String: [String: Sanction]] = [:]
        var secrets: [String: [UInt8]] = [:]
        /// Push subscriptions in the order they were made.
        var subscriptions: [PushSubscription] = []
        var pushMutes: [String: Set<String>] = [:]
        var webhookSelection: WebhookSelection?
        /// Outbox rows by id (ascending), live and dead.
        var webhooks: [Int64: WebhookRow] = [:]
        var lastWebhookID: Int64 = 0

        mutating func addWebhook(_ event: WebhookEvent) {
            lastWebhookID += 1
            var event = event
            event.id = lastWebhookID
            webhooks[lastWebhookID] = WebhookRow(event: event)
        }
    }

    struct WebhookRow {
        var event: WebhookEvent
        var dueAt: Int64 = 0
        var leaseUntil: Int64 = 0
        var dead = false
    }

    private let state = Mutex(State())
    private let idempotencyWindowMs: Int64

    public init(idempotencyWindow: Duration = .seconds(600)) {
        self.idempotencyWindowMs = idempotencyWindow.milliseconds
    }

    public func run() async throws {
        try? await gracefulShutdown()
    }

    public func append(_ draft: MessageDraft) async throws -> AppendResult {
        try state.withLock { state throws(ParleyError) in
            var room = state.rooms[draft.room] ?? Room()
            let key = IdempotencyKey(draft)
            if let key, let original = state.clientIds[key],
                original.timestamp.milliseconds >= draft.timestamp.milliseconds - idempotencyWindowMs
            {
                let target = original.target.flatMap(room.message).map(room.current)
                return AppendResult(message: room.message(original.id).map(room.current) ?? original, duplicate: true, target: target)
            }
            let seq = Int64(room.messages.count + 1)
            let sanction = try draft.checked(against: state.sanctions[draft.room]?[draft.sanctionedUser])
            let result: AppendResult
            if draft.moderation != nil {
                state.sanctions[draft.room, default: [:]][draft.sanctionedUser] = sanction
                result = AppendResult(message: draft.stored(seq: seq), duplicate: false)
            } else if let change = draft.change {
                result = AppendResult.change(try change.apply(draft, to: room.message(change.target))) { seq }
                if !result.duplicate, let target = result.target, let index = room.index[target.id] {
                    room.messages[index] = target
                    if target.deleted {
                        // The deleted content goes from its edits too.
                        for i in room.messages.indices where room.messages[i].kind == .edit && room.messages[i].target == target.id {
                            room.messages[i].content = ""
                        }
                    }
                }
            } else {
                var answered: Message?
                if let replyTo = draft.replyTo {
                    answered = room.message(replyTo)
                    try Message.checkReplyTarget(answered, id: replyTo, room: draft.room)
                }
                result = AppendResult(message: draft.stored(seq: seq).quoting(answered), duplicate: false)
            }
            if !result.duplicate {
                var row = result.message
                row.quote = nil
                room.index[row.id] = room.messages.count
                room.messages.append(row)
                if let key { state.clientIds[key] = row }
                for (target, message) in Self.outboxRows(for: [row], selection: state.webhookSelection) {
                    state.addWebhook(WebhookEvent(
                        id: 0, target: target, kind: WebhookKind(message.kind), room: message.room, user: message.user, seq: message.seq,
                        timestamp: message.timestamp, attempts: 0
                    ))
                }
            }
            state.rooms[draft.room] = room
            return result
        }
    }

    public func history(room: String, query: HistoryQuery) async throws -> HistoryPage {
        state.withLock { state in
            let all = state.rooms[room]?.messages ?? []
            // seq n lives at index n - 1.
            guard let range = query.seqRange, range.after < all.count else { return HistoryPage(messages: [], hasMore: false) }
            let room = state.rooms[room]!
            let lower = Int(range.after)
            let upper = Int(min(range.before - 1, Int64(all.count)))
            if query.pagesForward {
                let end = min(lower + query.limit, upper)
                return HistoryPage(messages: all[lower..<end].map(room.current), hasMore: end < upper)
            } else {
                let start = max(upper - query.limit, lower)
                return HistoryPage(messages: all[start..<upper].map(room.current), hasMore: start > lower)
            }
        }
    }

    public func sharedSecret(named name: String) async throws -> [UInt8] {
        state.withLock { state in
            if let secret = state.secrets[name] { return secret }
            let secret = (0..<32).map { _ in UInt8.random(in: 0...255) }
            state.secrets[name] = secret
            return secret
        }
    }

    public func addPushSubscription(_ subscription: PushSubscription) async throws {
        state.withLock { state in
            state.subscriptions.removeAll { $0.endpoint == subscription.endpoint }
            state.subscriptions.append(subscription)
        }
    }

    public func removePushSubscription(endpoint: String, user: String?) async throws -> Bool {
        state.withLock { state in
            guard let index = state.subscriptions.firstIndex(where: { $0.endpoint == endpoint && (user == nil || $0.user == user) })
            else { return false }
            state.subscriptions.remove(at: index)
            return true
        }
    }

    public func pushSubscriptions(user: String) async throws -> [PushSubscription] {
        state.withLock { $0.subscriptions.filter { $0.user == user } }
    }

    public func pushMutes(user: String) async throws -> Set<String> {
        state.withLock { $0.pushMutes[user] ?? [] }
    }

    public func setPushMutes(user: String, rooms: Set<String>) async throws {
        state.withLock { $0.pushMutes[user] = rooms.isEmpty ? nil : rooms }
    }

    public func sanction(room: String, user: String) async throws -> Sanction? {
        state.withLock { $0.sanctions[room]?[user] }
    }

    public func lastSeq(room: String) async throws -> Int64 {
        state.withLock { Int64($0.rooms[room]?.messages.count ?? 0) }
    }

    public func addToInbox(user: String, room: String, readSeq: Int64) async throws {
        state.withLock { state in
            if state.read[user]?[room] == nil { state.read[user, default: [:]][room] = readSeq }
        }
    }

    public func markRead(user: String, room: String, seq: Int64) async throws {
        state.withLock { state in
            state.read[user, default: [:]][room] = max(state.read[user]?[room] ?? 0, seq)
        }
    }

    public func inbox(user: String) async throws -> [InboxEntry] {
        state.withLock { state in
            (state.read[user] ?? [:]).sorted { $0.key < $1.key }.map { room, readSeq in
                let stored = state.rooms[room] ?? Room()
                let messages = stored.messages
                let unread = messages.dropFirst(Int(min(max(readSeq, 0), Int64(messages.count))))
                    .filter { $0.user != user && $0.kind == .message && !$0.deleted }
                return InboxEntry(
                    room: room, seq: Int64(messages.count), lastMessage: messages.last { $0.kind == .message }.map(stored.current),
                    readSeq: readSeq, unread: unread.count,
                    mentions: unread.filter { $0.storedMentions?.contains(" \(user) ") == true }.count
                )
            }
        }
    }

    public func search(terms: [String], before: String?, limit: Int) async throws -> [Message] {
        guard !terms.isEmpty else { return [] }
        let all = state.withLock { $0.rooms.values.flatMap { room in room.messages.map(room.current) } }
        return all
            .filter { message in
                if let before, message.id >= before { return false }
                guard message.kind == .message, !message.deleted else { return false }
                let words = Set(SearchTerms.tokens(message.content))
                return terms.allSatisfy(words.contains)
            }
            .sorted { $0.id > $1.id }
            .prefix(limit)
            .map { $0 }
    }

    public func rooms() async throws -> [(room: String, seq: Int64)] {
        state.withLock { state in
            state.rooms.map { (room: $0.key, seq: Int64($0.value.messages.count)) }.sorted { $0.room < $1.room }
        }
    }
}

extension Duration {
    public var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }

    public var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}

// MARK: Webhook outbox

extension MemoryMessageStore: WebhookOutbox {
    public func selectWebhooks(_ selection: WebhookSelection) {
        state.withLock { $0.webhookSelection = selection }
    }

    public func enqueueWebhooks(_ drafts: [WebhookDraft]) async throws {
        state.withLock { state in
            for (target, draft) in state.webhookSelection?.rows(drafts) ?? [] {
                state.addWebhook(WebhookEvent(
                    id: 0, target: target, kind: draft.kind, room: draft.room, user: draft.user, seq: draft.seq,
                    timestamp: draft.timestamp, attempts: 0
                ))
            }
        }
    }

    public func claimWebhooks(now: Timestamp, leaseUntil: Timestamp, limit: Int, perQueue: Int) async throws -> [WebhookEvent] {
        state.withLock { state in
            struct Queue: Hashable {
                var target: Int
                var room: String
            }
            // Each queue's live rows in order; then the queues whose head may go.
            var queues: [Queue: [Int64]] = [:]
            var order: [Queue] = []
            for id in state.webhooks.keys.sorted() {
                guard let row = state.webhooks[id], !row.dead else { continue }
                let queue = Queue(target: row.event.target, room: row.event.room)
                if queues[queue] == nil { order.append(queue) }
                queues[queue, default: []].append(id)
            }
            var claimed: [WebhookEvent] = []
            var heads = 0
            for queue in order where heads < limit {
                let ids = queues[queue]!
                guard let head = state.webhooks[ids[0]], head.dueAt <= now.milliseconds, head.leaseUntil <= now.milliseconds else { continue }
                heads += 1
                for id in ids.prefix(max(perQueue, 1)) {
                    guard var row = state.webhooks[id], row.leaseUntil <= now.milliseconds else { break }
                    row.leaseUntil = leaseUntil.milliseconds
                    state.webhooks[id] = row
                    claimed.append(row.event)
                }
            }
            return claimed.sorted { $0.id < $1.id }
        }
    }

    public func releaseWebhooks(ids: [Int64]) async throws {
        state.withLock { state in
            for id in ids { state.webhooks[id]?.leaseUntil = 0 }
        }
    }

    public func completeWebhook(id: Int64) async throws {
        state.withLock { _ = $0.webhooks.removeValue(forKey: id) }
    }

    public func retryWebhook(id: Int64, at: Timestamp, error: String) async throws {
        state.withLock { state in
            guard var row = state.webhooks[id] else { return }
            row.event.attempts += 1
            row.event.lastError = error
            row.dueAt = at.milliseconds
            row.leaseUntil = 0
            state.webhooks[id] = row
        }
    }

    public func deadLetterWebhook(id: Int64, error: String) async throws {
        state.withLock { state in
            guard var row = state.webhooks[id] else { return }
            row.event.attempts += 1
            row.event.lastError = error
            row.dead = true
            row.leaseUntil = 0
            state.webhooks[id] = row
        }
    }

    public func deadWebhooks(limit: Int) async throws -> [WebhookEvent] {
        state.withLock { state in
            let rows = state.webhooks
            return Array(rows.keys.sorted().compactMap { rows[$0] }.filter(\.dead).map(\.event).prefix(limit))
        }
    }

    public func reviveWebhook(id: Int64) async throws -> Bool {
        state.withLock { state in
            guard var row = state.webhooks[id], row.dead else { return false }
            row.dead = false
            row.dueAt = 0
            row.event.attempts = 0
            state.webhooks[id] = row
            return true
        }
    }

    public func webhookBacklog() async throws -> Int {
        state.withLock { state in state.webhooks.values.count { !$0.dead } }
    }
}
