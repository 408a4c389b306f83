import ServiceLifecycle
import Synchronization

/// History kept in memory: for tests and throwaway servers. Not durable.
public final class MemoryMessageStore: MessageStore {
    private struct Room {
        var messages: [Message] = []
    }

    private struct State {
        var rooms: [String: Room] = [:]
        var clientIds: [IdempotencyKey: Message] = [:]
        /// Read positions by user, then room.
        var read: [String: [String: Int64]] = [:]
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
        state.withLock { state in
            let key = IdempotencyKey(draft)
            if let key, let original = state.clientIds[key],
                original.timestamp.milliseconds >= draft.timestamp.milliseconds - idempotencyWindowMs
            {
                return AppendResult(message: original, duplicate: true)
            }
            let seq = Int64(state.rooms[draft.room, default: Room()].messages.count + 1)
            let message = draft.stored(seq: seq)
            state.rooms[draft.room, default: Room()].messages.append(message)
            if let key { state.clientIds[key] = message }
            return AppendResult(message: message, duplicate: false)
        }
    }

    public func history(room: String, query: HistoryQuery) async throws -> HistoryPage {
        state.withLock { state in
            let all = state.rooms[room]?.messages ?? []
            // seq n lives at index n - 1.
            guard let range = query.seqRange, range.after < all.count else { return HistoryPage(messages: [], hasMore: false) }
            let lower = Int(range.after)
            let upper = Int(min(range.before - 1, Int64(all.count)))
            if query.pagesForward {
                let end = min(lower + query.limit, upper)
                return HistoryPage(messages: Array(all[lower..<end]), hasMore: end < upper)
            } else {
                let start = max(upper - query.limit, lower)
                return HistoryPage(messages: Array(all[start..<upper]), hasMore: start > lower)
            }
        }
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
                let messages = state.rooms[room]?.messages ?? []
                let unread = messages.dropFirst(Int(min(max(readSeq, 0), Int64(messages.count)))).filter { $0.user != user }
                return InboxEntry(
                    room: room, lastMessage: messages.last, readSeq: readSeq, unread: unread.count,
                    mentions: unread.filter { $0.storedMentions?.contains(" \(user) ") == true }.count
                )
            }
        }
    }

    public func search(terms: [String], before: String?, limit: Int) async throws -> [Message] {
        guard !terms.isEmpty else { return [] }
        let all = state.withLock { $0.rooms.values.flatMap(\.messages) }
        return all
            .filter { message in
                if let before, message.id >= before { return false }
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
