import Logging
import NIOCore
import ParleyCore
import ServiceLifecycle
import Synchronization

/// Presence shared by every instance, in Redis. Keys (prefix `parley:`):
/// - `presence:<room>`: hash user -> since (ms) of the users present in the room;
/// - `sessions:<room>:<user>`: set of the user's session ids in the room (ids embed the
///   owning instance);
/// - `userrooms:<user>`: set of the rooms where the user is present;
/// - `rooms`: set of the rooms with anyone present;
/// - `owned:<instance>`: set of `room\nuser\nsession` entries owned by an instance;
/// - `instances`: set of the instance ids that own entries;
/// - `removed:<session>:<room>`: a 2-minute marker of a last removal, for retries;
/// - `instance:<id>`: the instance's heartbeat, refreshed every `heartbeatInterval` with a
///   `instanceTTL` expiry.
///
/// `add` and `remove` are Lua scripts, so "first session" and "last session" are decided
/// atomically across instances. Every instance runs the reaper every `heartbeatInterval`: one
/// script that, for each instance whose heartbeat expired, removes its entries and returns
/// the resulting leaves; the script is atomic, so exactly one survivor reaps a dead instance
/// and emits its `leave` events (through `onEvent`, wired to the broker). A dead instance's
/// users therefore get `leave` within `instanceTTL + heartbeatInterval` (6 s by default).
///
/// An instance that finds itself missing from `instances` (Redis restarted empty, or it was
/// reaped while paused) registers its local sessions again and emits their `join`s; a removal
/// that failed while Redis was away is retried with each heartbeat and emits its `leave`.
/// An event whose publication fails after Redis changed its state (the `leave` of a retried
/// removal, a reaped instance's leaves) is kept and published again with the next heartbeats:
/// Redis reports such a leave only once. A kept event that no longer holds (the user came
/// back, or left again) is dropped rather than published late.
///
/// Scripts compute some key names, so this needs a single Redis (not Redis Cluster).
public final class RedisPresence: PresenceStore {
    public struct Configuration: Sendable {
        public var keyPrefix = "parley:"
        public var instanceID: String
        public var heartbeatInterval: Duration = .seconds(1)
        public var instanceTTL: Duration = .seconds(5)

        public init(instanceID: String) {
            self.instanceID = instanceID
        }
    }

    private struct LocalSession: Hashable {
        var room: String
        var user: String
        var session: String
    }

    private let client: RedisClient
    private let configuration: Configuration
    private let logger: Logger
    /// This instance's sessions, to register them again after Redis lost them.
    private let local = Mutex<[LocalSession: Timestamp]>([:])
    /// Removals that failed (Redis away): retried with each heartbeat, so a session that ended
    /// during an outage does not stay present.
    private let pendingRemovals = Mutex<Set<LocalSession>>([])
    /// This instance's visible sessions (user, session), to register them again likewise.
    private let visibleHere = Mutex<Set<[String]>>([])
    private let eventHandler = Mutex<(@Sendable (ServerEvent) async throws -> Void)?>(nil)
    /// Events whose publication failed, oldest first; published again with each heartbeat.
    private let owedEvents = Mutex<[ServerEvent]>([])
    /// The most events kept for publishing again; beyond it the oldest are dropped, logged.
    static let owedEventLimit = 10_000

    public init(client: RedisClient, configuration: Configuration, logger: Logger) {
        self.client = client
        self.configuration = configuration
        self.logger = logger
    }

    /// Where the reaper's `leave` events (and the `join`s of a re-registration) go: the broker.
    /// An event the handler throws for is kept and handed to it again with the next heartbeats.
    public func onEvent(_ handler: @escaping @Sendable (ServerEvent) async throws -> Void) {
        eventHandler.withLock { $0 = handler }
    }

    private var prefix: String { configuration.keyPrefix }
    private var ttlMilliseconds: Int64 { configuration.instanceTTL.milliseconds }

    // MARK: Service

    /// Heartbeat and reaper until graceful shutdown; then withdraws the heartbeat.
    public func run() async throws {
        try? await cancelWhenGracefulShutdown {
            while true {
                await self.beat()
                await self.reap()
                try await Task.sleep(for: self.configuration.heartbeatInterval)
            }
        }
        _ = try? await client.pipeline([
            RESPCommand("DEL", prefix + "instance:" + configuration.instanceID),
            RESPCommand("SREM", prefix + "instances", configuration.instanceID),
        ])
    }

    private func beat() async {
        do {
            let reply = try await client.send(RESPCommand(
                "EVAL", RedisPresenceScripts.heartbeat, 2, prefix + "instance:" + configuration.instanceID, prefix + "instances",
                configuration.instanceID, ttlMilliseconds
            ))
            await publishOwedEvents()
            let sessions = local.withLock { $0 }
            if reply.int == 1 {
                for entry in visibleHere.withLock({ $0 }) { try await addVisible(user: entry[0], session: entry[1]) }
            }
            if reply.int == 1, !sessions.isEmpty {
                logger.warning("presence lost in Redis: registering \(sessions.count) local sessions again")
                for (entry, since) in sessions {
                    if try await addInRedis(room: entry.room, user: entry.user, session: entry.session, at: since) {
                        await emit(.join(room: entry.room, user: entry.user, timestamp: .now))
                    }
                }
            }
            for entry in pendingRemovals.withLock({ $0 }) {
                let last = try await removeInRedis(room: entry.room, user: entry.user, session: entry.session, retry: true)
                pendingRemovals.withLock { _ = $0.remove(entry) }
                if last { await emit(.leave(room: entry.room, user: entry.user, timestamp: .now)) }
            }
        } catch {
            logger.debug("presence heartbeat failed", metadata: ["error": "\(error)"])
        }
    }

    /// Reaps every instance whose heartbeat expired; returns the leaves it emitted.
    @discardableResult
    func reap() async -> [(room: String, user: String)] {
        do {
            let reply = try await client.send(RESPCommand("EVAL", RedisPresenceScripts.reap, 0, prefix))
            let fields = (reply.array ?? []).compactMap(\.string)
            var leaves: [(room: String, user: String)] = []
            var index = 0
            while index + 1 < fields.count {
                leaves.append((fields[index], fields[index + 1]))
                index += 2
            }
            if !leaves.isEmpty { logger.info("reaped \(leaves.count) presences of dead instances") }
            for leave in leaves { await emit(.leave(room: leave.room, user: leave.user, timestamp: .now)) }
            return leaves
        } catch {
            logger.debug("presence reaper failed", metadata: ["error": "\(error)"])
            return []
        }
    }

    private func emit(_ event: ServerEvent) async {
        guard let handler = eventHandler.withLock({ $0 }) else { return }
        do {
            try await handler(event)
        } catch {
            logger.warning("could not publish a presence event: kept for the next heartbeat", metadata: ["error": "\(error)", "room": "\(event.room)"])
            owe([event])
        }
    }

    private func owe(_ events: [ServerEvent]) {
        let dropped: Int = owedEvents.withLock { owed in
            owed.append(contentsOf: events)
            let excess = owed.count - Self.owedEventLimit
            guard excess > 0 else { return 0 }
            owed.removeFirst(excess)
            return excess
        }
        if dropped > 0 { logger.error("dropped \(dropped) presence events that could not be published") }
    }

    /// Hands the kept events to the handler again, in order, stopping at the first failure.
    private func publishOwedEvents() async {
        let owed = owedEvents.withLock { owed in
            defer { owed.removeAll() }
            return owed
        }
        guard !owed.isEmpty else { return }
        guard let handler = eventHandler.withLock({ $0 }) else {
            owe(owed)
            return
        }
        for (index, event) in owed.enumerated() {
            do {
                if try await stillHolds(event) { try await handler(event) }
            } catch {
                owedEvents.withLock { $0.insert(contentsOf: owed[index...], at: 0) }
                return
            }
        }
        logger.info("published \(owed.count) presence events kept since a failure")
    }

    /// Whether a kept join or leave still says where its user is: published after a newer
    /// event of the same user, it would undo that one in every client.
    private func stillHolds(_ event: ServerEvent) async throws -> Bool {
        switch event {
        case .join(let room, let user, _): try await isPresent(user: user, room: room)
        case .leave(let room, let user, _): try await !isPresent(user: user, room: room)
        default: true
        }
    }

    private func isPresent(user: String, room: String) async throws -> Bool {
        try await client.send(RESPCommand("HEXISTS", prefix + "presence:" + room, user)).int == 1
    }

    /// The events kept for publishing again (tests).
    var owedEventCount: Int { owedEvents.withLock { $0.count } }

    // MARK: PresenceStore

    public func add(room: String, user: String, session: String, at: Timestamp) async throws -> Bool {
        let first = try await addInRedis(room: room, user: user, session: session, at: at)
        let entry = LocalSession(room: room, user: user, session: session)
        local.withLock { $0[entry] = at }
        pendingRemovals.withLock { _ = $0.remove(entry) }
        return first
    }

    private func addInRedis(room: String, user: String, session: String, at: Timestamp) async throws -> Bool {
        let id = configuration.instanceID
        let reply = try await client.send(RESPCommand(
            "EVAL", RedisPresenceScripts.add, 7,
            prefix + "presence:" + room, prefix + "sessions:" + room + ":" + user, prefix + "userrooms:" + user,
            prefix + "rooms", prefix + "owned:" + id, prefix + "instance:" + id, prefix + "instances",
            user, session, room, at.milliseconds, room + "\n" + user + "\n" + session, id, ttlMilliseconds
        ))
        return reply.int == 1
    }

    public func remove(room: String, user: String, session: String) async throws -> Bool {
        let entry = LocalSession(room: room, user: user, session: session)
        local.withLock { _ = $0.removeValue(forKey: entry) }
        do {
            return try await removeInRedis(room: room, user: user, session: session, retry: false)
        } catch {
            pendingRemovals.withLock { _ = $0.insert(entry) }
            throw error
        }
    }

    /// `retry`: an earlier attempt failed, possibly after Redis ran it (a timeout): the
    /// marker the script leaves on a last removal then tells whether the leave is still owed.
    private func removeInRedis(room: String, user: String, session: String, retry: Bool) async throws -> Bool {
        let reply = try await client.send(RESPCommand(
            "EVAL", RedisPresenceScripts.remove, 6,
            prefix + "presence:" + room, prefix + "sessions:" + room + ":" + user, prefix + "userrooms:" + user,
            prefix + "rooms", prefix + "owned:" + configuration.instanceID, prefix + "removed:" + session + ":" + room,
            user, session, room, room + "\n" + user + "\n" + session, retry ? "1" : "0"
        ))
        return reply.int == 1
    }

    /// `visible:<user>`: a set of the user's visible session ids. A session id starts with its
    /// instance's id, so a session of an instance whose heartbeat is gone stops counting (and
    /// the check removes it).
    public func setVisible(user: String, session: String, _ visible: Bool) async throws {
        if visible {
            visibleHere.withLock { _ = $0.insert([user, session]) }
            try await addVisible(user: user, session: session)
        } else {
            visibleHere.withLock { _ = $0.remove([user, session]) }
            _ = try await client.send(RESPCommand("SREM", prefix + "visible:" + user, session))
        }
    }

    private func addVisible(user: String, session: String) async throws {
        _ = try await client.pipeline([
            RESPCommand("SADD", prefix + "visible:" + user, session),
            // Whatever is left behind goes within a day.
            RESPCommand("PEXPIRE", prefix + "visible:" + user, 86_400_000),
        ])
    }

    public func hasVisibleSession(user: String) async throws -> Bool {
        let reply = try await client.send(RESPCommand("EVAL", RedisPresenceScripts.hasVisible, 1, prefix + "visible:" + user, prefix))
        return reply.int == 1
    }

    public func members(room: String) async throws -> [PresenceEntry] {
        let reply = try await client.send(RESPCommand("HGETALL", prefix + "presence:" + room))
        return (reply.stringMap ?? [:])
            .map { PresenceEntry(user: $0.key, since: Timestamp(milliseconds: Int64($0.value) ?? 0)) }
            .sorted { $0.user < $1.user }
    }

    public func rooms(user: String) async throws -> [String] {
        let reply = try await client.send(RESPCommand("SMEMBERS", prefix + "userrooms:" + user))
        return (reply.array ?? []).compactMap(\.string).sorted()
    }

    public func onlineCounts() async throws -> [String: Int] {
        let reply = try await client.send(RESPCommand("EVAL", RedisPresenceScripts.onlineCounts, 0, prefix))
        let fields = reply.array ?? []
        var counts: [String: Int] = [:]
        var index = 0
        while index + 1 < fields.count {
            if let room = fields[index].string, let count = fields[index + 1].int, count > 0 { counts[room] = Int(count) }
            index += 2
        }
        return counts
    }
}

/// The Lua scripts of `RedisPresence`; each runs atomically in Redis.
enum RedisPresenceScripts {
    /// KEYS: heartbeat, instances. ARGV: id, ttl ms. Returns 1 when the instance was not
    /// registered (first beat, or its entries were lost or reaped).
    static let heartbeat = """
        redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
        return redis.call('SADD', KEYS[2], ARGV[1])
        """

    /// KEYS: presence, sessions, userrooms, rooms, owned, heartbeat, instances.
    /// ARGV: user, session, room, since ms, owned entry, instance id, ttl ms. Returns 1 for the
    /// user's first session in the room.
    static let add = """
        redis.call('SET', KEYS[6], '1', 'PX', ARGV[7], 'NX')
        redis.call('SADD', KEYS[7], ARGV[6])
        redis.call('SADD', KEYS[5], ARGV[5])
        if redis.call('SADD', KEYS[2], ARGV[2]) == 1 and redis.call('SCARD', KEYS[2]) == 1 then
          redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
          redis.call('SADD', KEYS[3], ARGV[3])
          redis.call('SADD', KEYS[4], ARGV[3])
          return 1
        end
        return 0
        """

    /// KEYS: presence, sessions, userrooms, rooms, owned, removal marker. ARGV: user, session,
    /// room, owned entry, retry flag. Returns 1 when it was the user's last session in the
    /// room. A last removal leaves a marker for 2 minutes: a retry of a removal whose reply was
    /// lost finds it and still reports the leave, exactly once.
    static let remove = """
        redis.call('SREM', KEYS[5], ARGV[4])
        if redis.call('SREM', KEYS[2], ARGV[2]) == 1 then
          if redis.call('SCARD', KEYS[2]) > 0 then return 0 end
          redis.call('HDEL', KEYS[1], ARGV[1])
          redis.call('SREM', KEYS[3], ARGV[3])
          if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[4], ARGV[3]) end
          redis.call('SET', KEYS[6], '1', 'EX', 120)
          return 1
        end
        if ARGV[5] == '1' and redis.call('DEL', KEYS[6]) == 1 then return 1 end
        return 0
        """

    /// ARGV: key prefix. Removes the entries of every instance whose heartbeat expired and
    /// returns the leaves as a flat list room, user, room, user...
    static let reap = """
        local p = ARGV[1]
        local leaves = {}
        for _, id in ipairs(redis.call('SMEMBERS', p .. 'instances')) do
          if redis.call('EXISTS', p .. 'instance:' .. id) == 0 then
            redis.call('SREM', p .. 'instances', id)
            local owned = p .. 'owned:' .. id
            for _, entry in ipairs(redis.call('SMEMBERS', owned)) do
              local room, user, session = string.match(entry, '^([^\\n]*)\\n([^\\n]*)\\n(.*)$')
              if room then
                local sessions = p .. 'sessions:' .. room .. ':' .. user
                if redis.call('SREM', sessions, session) == 1 and redis.call('SCARD', sessions) == 0 then
                  local presence = p .. 'presence:' .. room
                  redis.call('HDEL', presence, user)
                  redis.call('SREM', p .. 'userrooms:' .. user, room)
                  if redis.call('HLEN', presence) == 0 then redis.call('SREM', p .. 'rooms', room) end
                  table.insert(leaves, room)
                  table.insert(leaves, user)
                end
              end
            end
            redis.call('DEL', owned)
          end
        end
        return leaves
        """

    /// ARGV: key prefix. Returns room, count, room, count...
    /// KEYS[1] `visible:<user>`; ARGV[1] the prefix. 1 when a session of a live instance
    /// (session ids are `<instance>-<n>`) is in the set; dead instances' sessions are removed.
    static let hasVisible = """
        for _, session in ipairs(redis.call('SMEMBERS', KEYS[1])) do
            local instance = string.match(session, '^(.*)-[^-]*$')
            if instance and redis.call('EXISTS', ARGV[1] .. 'instance:' .. instance) == 1 then return 1 end
            redis.call('SREM', KEYS[1], session)
        end
        return 0
        """

    static let onlineCounts = """
        local p = ARGV[1]
        local result = {}
        for _, room in ipairs(redis.call('SMEMBERS', p .. 'rooms')) do
          table.insert(result, room)
          table.insert(result, redis.call('HLEN', p .. 'presence:' .. room))
        end
        return result
        """
}
