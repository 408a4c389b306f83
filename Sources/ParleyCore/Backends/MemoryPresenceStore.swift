import ServiceLifecycle
import Synchronization

/// Presence of a single instance, in memory.
public final class MemoryPresenceStore: PresenceStore {
    private struct Entry {
        var since: Timestamp
        var sessions: Set<String>
    }

    /// room -> user -> entry
    private let state = Mutex<[String: [String: Entry]]>([:])
    /// user -> visible sessions
    private let visible = Mutex<[String: Set<String>]>([:])

    public init() {}

    public func run() async throws {
        try? await gracefulShutdown()
    }

    public func add(room: String, user: String, session: String, at: Timestamp) async throws -> Bool {
        state.withLock { rooms in
            if rooms[room, default: [:]][user] == nil {
                rooms[room, default: [:]][user] = Entry(since: at, sessions: [session])
                return true
            }
            rooms[room]![user]!.sessions.insert(session)
            return false
        }
    }

    public func remove(room: String, user: String, session: String) async throws -> Bool {
        state.withLock { rooms in
            guard var entry = rooms[room]?[user], entry.sessions.remove(session) != nil else { return false }
            if entry.sessions.isEmpty {
                rooms[room]![user] = nil
                if rooms[room]!.isEmpty { rooms[room] = nil }
                return true
            }
            rooms[room]![user] = entry
            return false
        }
    }

    public func members(room: String) async throws -> [PresenceEntry] {
        state.withLock { rooms in
            (rooms[room] ?? [:]).map { PresenceEntry(user: $0.key, since: $0.value.since) }.sorted { $0.user < $1.user }
        }
    }

    public func rooms(user: String) async throws -> [String] {
        state.withLock { rooms in rooms.compactMap { $0.value[user] == nil ? nil : $0.key }.sorted() }
    }

    public func onlineCounts() async throws -> [String: Int] {
        state.withLock { rooms in rooms.mapValues(\.count) }
    }

    public func setVisible(user: String, session: String, _ isVisible: Bool) async throws {
        visible.withLock { visible in
            if isVisible {
                visible[user, default: []].insert(session)
            } else if visible[user]?.remove(session) != nil, visible[user]!.isEmpty {
                visible[user] = nil
            }
        }
    }

    public func hasVisibleSession(user: String) async throws -> Bool {
        visible.withLock { $0[user] != nil }
    }
}
