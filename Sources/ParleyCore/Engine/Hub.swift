import Logging
import NIOCore
import Synchronization

/// Local fan-out: room -> local members, delivering each room's messages strictly in `seq`
/// order without gap or duplicate.
///
/// Two cursors make that hold whatever order the broker hands messages over in:
/// - per room, `lastDelivered`: an early arrival waits in `pending` until the gap before it
///   closes, or until `gapTimeout` passes and the gap is filled from the store;
/// - per member, `cursor`: a member that joined with `since` first replays history from the
///   store while live messages wait in its buffer; it goes live once the two meet.
///
/// Each event is encoded once per wire format and the same bytes are queued on every member's
/// outbox, synchronously and under the room's shard lock, so no member can slow another.
final class Hub: BrokerReceiver {
    private final class Shard: Sendable {
        let rooms = Mutex<[String: Room]>([:])
    }

    private static let shardCount = 16
    private let shards = (0..<Hub.shardCount).map { _ in Shard() }
    private let store: any MessageStore
    private let metrics: ParleyMetrics
    private let logger: Logger
    let gapTimeout: Duration
    /// Live messages a catching-up member may buffer before it re-reads the store instead.
    static let maxCatchUpBuffer = 4096
    /// Called with the sessions a kick or ban row named, after it was queued to them.
    private let evictHandler = Mutex<(@Sendable ([Session], String) -> Void)?>(nil)

    /// Called with every call signal this instance delivers (the engine ends its ring timers).
    private let callHandler = Mutex<(@Sendable (CallSignal) -> Void)?>(nil)

    func onCallSignal(_ handler: @escaping @Sendable (CallSignal) -> Void) {
        callHandler.withLock { $0 = handler }
    }

    func onEvict(_ handler: @escaping @Sendable ([Session], String) -> Void) {
        evictHandler.withLock { $0 = handler }
    }

    private func evict(_ sessions: [Session], room: String) {
        guard !sessions.isEmpty else { return }
        evictHandler.withLock { $0 }?(sessions, room)
    }
    /// The running gap-fill task of each room that waits for missing messages.
    private let gapFills = Mutex<[String: (id: Int, task: Task<Void, Never>)]>([:])
    private let gapFillIDs = Atomic<Int>(0)

    init(store: any MessageStore, metrics: ParleyMetrics, gapTimeout: Duration = .milliseconds(200), logger: Logger) {
        self.store = store
        self.metrics = metrics
        self.gapTimeout = gapTimeout
        self.logger = logger
    }

    private func shard(_ room: String) -> Shard {
        var hasher = Hasher()
        hasher.combine(room)
        return shards[Int(UInt(bitPattern: hasher.finalize()) % UInt(Hub.shardCount))]
    }

    // MARK: Membership

    struct Position {
        /// The room's last delivered seq when the member was added.
        var lastSeq: Int64
        /// The member must replay history from the store (`catchUp`) before it is live.
        var catchingUp: Bool
        /// The room had no local member before: the broker must start carrying it here.
        var roomCreated: Bool
    }

    /// Adds `session` to `room`. Without `since` it starts at the room's current end; with it,
    /// at `since` (capped at the current end) and must then `catchUp`.
    func add(_ session: Session, room: String, since: Int64?) async throws -> Position {
        let shard = shard(room)
        let existing = shard.rooms.withLock { rooms -> Position? in
            rooms[room]?.add(session, since: since).map { Position(lastSeq: $0.last, catchingUp: $0.catchingUp, roomCreated: false) }
        }
        if let existing { return existing }
        let stored = try await store.lastSeq(room: room)
        return shard.rooms.withLock { rooms in
            var created = false
            if rooms[room] == nil {
                rooms[room] = Room(lastDelivered: stored)
                created = true
            }
            let (last, catchingUp) = rooms[room]!.add(session, since: since)!
            return Position(lastSeq: last, catchingUp: catchingUp, roomCreated: created)
        }
    }

    /// Adds `session` to its user's channel (`UserChannel`), which carries only events
    /// addressed to the user, none stored. Returns true when the channel had no local member:
    /// the broker must start carrying it here.
    func addToUserChannel(_ session: Session) -> Bool {
        let room = UserChannel.room(of: session.user)
        return shard(room).rooms.withLock { rooms in
            var created = false
            if rooms[room] == nil {
                rooms[room] = Room(lastDelivered: 0)
                created = true
            }
            _ = rooms[room]!.add(session, since: nil)
            return created
        }
    }

    /// The last seq delivered in `room` here, nil when it has no local member.
    func lastDelivered(room: String) -> Int64? {
        shard(room).rooms.withLock { $0[room]?.lastDelivered }
    }

    /// Removes `session` from `room`. `roomEmpty`: the room has no local member left.
    func remove(_ session: Session, room: String) -> (removed: Bool, roomEmpty: Bool) {
        shard(room).rooms.withLock { rooms in
            guard rooms[room]?.members.removeValue(forKey: ObjectIdentifier(session)) != nil else { return (false, false) }
            if rooms[room]!.members.isEmpty {
                rooms[room] = nil
                return (true, true)
            }
            return (true, false)
        }
    }

    /// Replays stored messages after the member's cursor until it meets the live stream.
    func catchUp(_ session: Session, room: String, from since: Int64) async throws {
        var cursor = since
        while true {
            let page = try await store.history(room: room, query: HistoryQuery(after: cursor, limit: 100))
            for message in page.messages where message.seq == cursor + 1 {
                // Replay only as fast as the client reads: a long history must not look like
                // a slow consumer.
                guard await session.outbox.waitForSpace() else { return }
                session.send(.message(message))
                cursor = message.seq
            }
            if page.hasMore { continue }
            let live = shard(room).rooms.withLock { rooms in
                rooms[room]?.finishCatchUp(session, cursor: &cursor) ?? true
            }
            if live { return }
        }
    }

    // MARK: Delivery

    func receive(_ event: ServerEvent) {
        metrics.brokerReceived.increment()
        let shard = shard(event.room)
        // Encode for the room's wire formats before taking the lock for the fan-out: the lock
        // is held only to queue the same bytes on each member's outbox.
        guard let formats = shard.rooms.withLock({ $0[event.room]?.formats }) else { return }
        var encoded = EncodedEvent(event)
        for format in formats { _ = encoded.bytes(for: format) }
        guard case .message(let message) = event else {
            shard.rooms.withLock { rooms in rooms[event.room]?.deliverEphemeral(&encoded) }
            if case .call(let signal) = event { callHandler.withLock { $0 }?(signal) }
            return
        }
        let (scheduleGapFill, delivered, evicted) = shard.rooms.withLock { rooms -> (Bool, Int, [Session]) in
            guard rooms[message.room] != nil else { return (false, 0, []) }
            let gap = rooms[message.room]!.receive(message, encoded: &encoded)
            return (gap, rooms[message.room]!.takeDeliveredCount(), rooms[message.room]!.takeEvicted())
        }
        if delivered > 0 { metrics.delivered.increment(by: delivered) }
        evict(evicted, room: message.room)
        if scheduleGapFill { scheduleGapFillTask(room: message.room) }
    }

    /// Delivers the stored messages after the room's last delivered one, if the store has
    /// any: a gap the broker cannot reveal because no later message arrived.
    func resync(room: String) async {
        // A user channel stores nothing: there is nothing to compare with the store.
        guard !UserChannel.isUserChannel(room) else { return }
        guard var cursor = shard(room).rooms.withLock({ $0[room]?.lastDelivered }) else { return }
        do {
            guard try await store.lastSeq(room: room) > cursor else { return }
            var rounds = 0
            while rounds < 1000 {
                rounds += 1
                let page = try await store.history(room: room, query: HistoryQuery(after: cursor, limit: 100))
                guard let last = page.messages.last else { return }
                let (scheduleGapFill, delivered, evicted) = shard(room).rooms.withLock { rooms -> (Bool, Int, [Session]) in
                    guard rooms[room] != nil else { return (false, 0, []) }
                    var gap = false
                    for message in page.messages where rooms[room]!.receive(message) { gap = true }
                    return (gap, rooms[room]!.takeDeliveredCount(), rooms[room]!.takeEvicted())
                }
                if delivered > 0 { metrics.delivered.increment(by: delivered) }
                evict(evicted, room: room)
                if scheduleGapFill { scheduleGapFillTask(room: room) }
                cursor = last.seq
                if !page.hasMore { return }
            }
        } catch {
            logger.warning("resync failed", metadata: ["room": "\(room)", "error": "\(error)"])
        }
    }

    /// The rooms with local members.
    var roomNames: [String] {
        shards.flatMap { shard in shard.rooms.withLock { Array($0.keys) } }
    }

    private func scheduleGapFillTask(room: String) {
        let id = gapFillIDs.wrappingAdd(1, ordering: .relaxed).newValue
        let task = Task { [self] in
            var attempts = 0
            while !Task.isCancelled {
                try? await Task.sleep(for: gapTimeout)
                guard !Task.isCancelled else { return }
                attempts += 1
                if await fillGap(room: room, giveUp: attempts >= 25) { break }
            }
            gapFills.withLock { tasks in if tasks[room]?.id == id { tasks[room] = nil } }
        }
        let previous = gapFills.withLock { $0.updateValue((id, task), forKey: room) }
        previous?.task.cancel()
    }

    /// Stops the gap-fill tasks (at shutdown, once no member is left to deliver to).
    func stop() {
        let running = gapFills.withLock { tasks -> [Task<Void, Never>] in
            defer { tasks.removeAll() }
            return tasks.values.map(\.task)
        }
        for task in running { task.cancel() }
    }

    /// Reads the missing messages of a room's gap from the store. Returns true when no gap
    /// is left to wait for.
    private func fillGap(room: String, giveUp: Bool) async -> Bool {
        let gap = shard(room).rooms.withLock { rooms in rooms[room]?.gap }
        guard let (after, before) = gap else {
            shard(room).rooms.withLock { rooms in rooms[room]?.gapFillScheduled = false }
            return true
        }
        let missing: [Message]
        do {
            let limit = Int(min(before - after - 1, 100))
            missing = try await store.history(room: room, query: HistoryQuery(before: before, after: after, limit: limit)).messages
        } catch {
            logger.warning("gap fill failed", metadata: ["room": "\(room)", "error": "\(error)"])
            missing = []
        }
        let (done, evicted) = shard(room).rooms.withLock { rooms -> (Bool, [Session]) in
            guard rooms[room] != nil else { return (true, []) }
            for message in missing { _ = rooms[room]!.receive(message) }
            if giveUp, rooms[room]!.gap != nil {
                logger.error("skipping messages missing from the store", metadata: ["room": "\(room)"])
                rooms[room]!.skipGap()
            }
            let done = rooms[room]!.gap == nil
            if done { rooms[room]!.gapFillScheduled = false }
            return (done, rooms[room]!.takeEvicted())
        }
        evict(evicted, room: room)
        return done
    }
}

/// One room's local state, mutated only under its shard's lock.
struct Room {
    struct Member {
        let session: Session
        /// Last seq queued on the member's outbox.
        var cursor: Int64
        /// Live messages held while the member replays history; nil once live.
        var buffer: [Message]?
        var bufferOverflowed = false
    }

    var lastDelivered: Int64
    /// The wire formats of the room's members (a handful at most), encoded for ahead of the
    /// fan-out; one a member brings later is encoded for on first use. Empty while the room
    /// has had only one member.
    var formats: [any EventEncoder] = []
    var pending: [Int64: Message] = [:]
    var gapFillScheduled = false
    var members: [ObjectIdentifier: Member] = [:]
    /// Sessions a delivered kick or ban named, for the hub to take out of the room.
    var evicted: [Session] = []
    /// Messages queued on members' outboxes since the hub last read it (for metrics).
    private var deliveredCount = 0

    init(lastDelivered: Int64) {
        self.lastDelivered = lastDelivered
    }

    /// Adds a member; nil when the session is already a member.
    mutating func add(_ session: Session, since: Int64?) -> (last: Int64, catchingUp: Bool)? {
        let key = ObjectIdentifier(session)
        guard members[key] == nil else { return nil }
        let cursor = min(since ?? lastDelivered, lastDelivered)
        let catchingUp = cursor < lastDelivered
        // A room of one (a user's own channel, one per connection) keeps no list: its events are
        // encoded on first use. From the second member on, every member's format is listed.
        if let first = members.first?.value.session.encoder {
            if !formats.contains(where: { $0 === first }) { formats.append(first) }
            if !formats.contains(where: { $0 === session.encoder }) { formats.append(session.encoder) }
        }
        members[key] = Member(session: session, cursor: cursor, buffer: catchingUp ? [] : nil)
        return (lastDelivered, catchingUp)
    }

    /// The missing range `(after, before)` when a message waits for an earlier one.
    var gap: (Int64, Int64)? {
        guard let first = pending.keys.min() else { return nil }
        return (lastDelivered, first)
    }

    /// Takes a message from the broker or the store. Returns true when it opened a gap that
    /// needs a gap-fill task.
    mutating func receive(_ message: Message) -> Bool {
        var encoded = EncodedEvent(.message(message))
        return receive(message, encoded: &encoded)
    }

    /// `encoded`: the message's encodings made so far, used for it if it goes out now.
    mutating func receive(_ message: Message, encoded: inout EncodedEvent) -> Bool {
        if message.seq <= lastDelivered || pending[message.seq] != nil { return false }
        guard message.seq == lastDelivered + 1 else {
            pending[message.seq] = message
            defer { gapFillScheduled = true }
            return !gapFillScheduled
        }
        deliver(message, encoded: &encoded)
        while let next = pending.removeValue(forKey: lastDelivered + 1) {
            deliver(next)
        }
        return false
    }

    mutating func takeEvicted() -> [Session] {
        defer { evicted = [] }
        return evicted
    }

    mutating func takeDeliveredCount() -> Int {
        defer { deliveredCount = 0 }
        return deliveredCount
    }

    /// Gives up on the missing messages before the first pending one.
    mutating func skipGap() {
        guard let first = pending.keys.min() else { return }
        lastDelivered = first - 1
        while let next = pending.removeValue(forKey: lastDelivered + 1) {
            deliver(next)
        }
    }

    private mutating func deliver(_ message: Message) {
        var encoded = EncodedEvent(.message(message))
        deliver(message, encoded: &encoded)
    }

    private mutating func deliver(_ message: Message, encoded: inout EncodedEvent) {
        lastDelivered = message.seq
        for index in members.values.indices where members.values[index].deliver(message, encoded: &encoded) {
            deliveredCount += 1
        }
        if message.kind == .kick || message.kind == .ban, let target = message.target {
            evicted += members.values.map(\.session).filter { $0.user == target && !$0.identity.mayModerate }
        }
    }

    func deliverEphemeral(_ encoded: inout EncodedEvent) {
        let event = encoded.event
        let skip = event.subjectUserIfNotEchoed
        // A notification carries a message: only sessions whose credential may read its room
        // get it (a `rooms` claim may leave a mentioned user out of the room).
        var about: String?
        if case .notify(_, _, let message) = event { about = message.room }
        var signal: CallSignal?
        if case .call(let call) = event { signal = call }
        for member in members.values where member.session.user != skip {
            if let about, !member.session.identity.mayAccess(about) { continue }
            if let signal, !signal.isFor(session: member.session.id) { continue }
            member.session.outbox.enqueue(encoded.bytes(for: member.session.encoder))
        }
    }

    /// Moves a catching-up member to live once its replay reached the buffered live messages.
    /// Returns false when the member must read the store again (a gap remains).
    mutating func finishCatchUp(_ session: Session, cursor: inout Int64) -> Bool {
        let key = ObjectIdentifier(session)
        guard var member = members[key], var buffer = member.buffer else { return true }
        defer { members[key] = member }
        member.cursor = cursor
        if member.bufferOverflowed {
            member.buffer = []
            member.bufferOverflowed = false
            return false
        }
        buffer.removeAll { $0.seq <= cursor }
        if let first = buffer.first, first.seq != cursor + 1 {
            member.buffer = buffer
            return false
        }
        for message in buffer {
            session.send(.message(message))
            cursor = message.seq
        }
        member.cursor = cursor
        guard cursor >= lastDelivered else {
            member.buffer = []
            return false
        }
        member.buffer = nil
        return true
    }
}

extension Room.Member {
    /// Queues the message live, or buffers it while catching up. Returns true when queued.
    mutating func deliver(_ message: Message, encoded: inout EncodedEvent) -> Bool {
        if buffer != nil {
            if buffer!.count >= Hub.maxCatchUpBuffer {
                buffer!.removeAll()
                bufferOverflowed = true
            } else if !bufferOverflowed {
                buffer!.append(message)
            }
            return false
        }
        // A live member's cursor is at the room's previous seq, or past this one right after
        // a replay that read ahead of the broker. It trails further only when the room gave
        // up on a gap (`skipGap`), and then it follows the room.
        guard message.seq > cursor else { return false }
        cursor = message.seq
        return session.outbox.enqueue(encoded.bytes(for: session.encoder), publishedAt: message.timestamp)
    }
}

/// An event with its encodings, made at most once per wire format during one delivery.
struct EncodedEvent {
    let event: ServerEvent
    private var cache: [(ObjectIdentifier, ByteBuffer)] = []

    init(_ event: ServerEvent) {
        self.event = event
    }

    mutating func bytes(for encoder: any EventEncoder) -> ByteBuffer {
        let key = ObjectIdentifier(encoder)
        for (cached, bytes) in cache where cached == key { return bytes }
        let bytes = encoder.encode(event)
        cache.append((key, bytes))
        return bytes
    }
}
