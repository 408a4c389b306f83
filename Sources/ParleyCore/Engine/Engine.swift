import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// The one engine of a process: validates and authorizes commands from every transport, runs
/// the publish path and keeps sessions, memberships, presence and typing state.
///
/// Publish path: validate -> rate limit -> `store.append` (durable, assigns `seq`) ->
/// `broker.publish` -> every instance's hub -> members' outboxes. The ack is the stored message.
public final class Engine: Sendable {
    public let limits: Limits
    public let instanceID: String
    public let metrics: ParleyMetrics
    /// Open long-lived connections, in total and per client address.
    public let connections: ConnectionLimiter
    /// Wall and monotonic time for expiry, typing, coalescing and rate limits.
    public let clock: any ParleyClock
    let store: any MessageStore
    let broker: any Broker
    let presence: any PresenceStore
    /// Where uploaded files live; nil: attachments are off.
    public let attachments: (any AttachmentStore)?
    let hub: Hub
    /// STUN and TURN servers handed to calls.
    public let ice: ICEConfiguration
    /// Web Push to users with no visible session; nil: push is off.
    public let push: PushNotifier?
    public let webhooks: Webhooks?
    public let publishGate: (any PublishGate)?
    /// Calls started on this instance that still ring, by id: the timer that ends them as
    /// missed, and the call.
    private let ringing = Mutex<[String: (call: CallID, timer: ScheduledCall)]>([:])
    /// How long a call rings before it is missed.
    public static let ringTime: Duration = .seconds(30)
    private let callSecretCache = Mutex<[UInt8]?>(nil)
    /// Evictions (`evict`) under way, for `finishEvictions`.
    private let evictions = Mutex<[Task<Void, Never>]>([])
    let logger: Logger
    private let sessions = Mutex<[ObjectIdentifier: Session]>([:])
    private let sessionCounter = Atomic<Int>(0)
    private let draining = Atomic<Bool>(false)
    /// Poked when draining starts, so that watchers (gRPC health) report it at once.
    private let drainWatchers = Mutex<[ObjectIdentifier: Wakeup]>([:])
    private let typing = Mutex<[TypingKey: ContinuousClock.Instant]>([:])
    /// Typing and read events a member changes faster than `limits.coalesceWindow`: the
    /// newest state wins (PROTOCOL.md: typing is coalesced, never rejected).
    private let typingEvents: Mutex<Coalescer<TypingKey, Bool>>
    private let readEvents: Mutex<Coalescer<TypingKey, Int64>>
    /// Publish rate of calls that come without a session (HTTP), per user, at the
    /// per-connection rate.
    private let sessionlessRates = Mutex<[String: TokenBucket]>([:])
    /// Publish rate of each user across all of their sessions and calls.
    private let userRates = Mutex<[String: TokenBucket]>([:])
    /// Command budgets of calls that come without a session (HTTP and gRPC reads), per client
    /// address.
    private let sessionlessBudgets = Mutex<[String: TokenBucket]>([:])
    /// Rooms above `limits.largeRoomSize`, whose joins and leaves go out as presence updates,
    /// and the changes waiting for the next update.
    private let largeRooms = Mutex<Set<String>>([])
    private let presenceChanges = Mutex<[String: PresenceChanges]>([:])
    /// Users and rooms this instance already put in the user's list (a join, a DM's message).
    private let listedHere = Mutex<Set<InboxKey>>([])

    public init(
        store: any MessageStore,
        broker: any Broker,
        presence: any PresenceStore,
        attachments: (any AttachmentStore)? = nil,
        ice: ICEConfiguration = ICEConfiguration(),
        push: PushNotifier? = nil,
        webhooks: Webhooks? = nil,
        publishGate: (any PublishGate)? = nil,
        limits: Limits = Limits(),
        metrics: ParleyMetrics = ParleyMetrics(),
        instanceID: String = MessageID.next().suffix(8).lowercased(),
        logger: Logger = Logger(label: "parley.engine"),
        clock: any ParleyClock = SystemClock()
    ) {
        self.clock = clock
        self.metrics = metrics
        self.store = store
        self.attachments = attachments
        self.ice = ice
        self.push = push
        self.webhooks = webhooks
        self.publishGate = publishGate
        self.broker = broker
        self.presence = presence
        self.limits = limits
        self.connections = ConnectionLimiter(maxTotal: limits.maxConnections, maxPerAddress: limits.maxConnectionsPerIP)
        self.instanceID = instanceID
        self.logger = logger
        self.hub = Hub(store: store, metrics: metrics, logger: logger)
        self.typingEvents = Mutex(Coalescer(window: limits.coalesceWindow))
        self.readEvents = Mutex(Coalescer(window: limits.coalesceWindow))
        broker.attach(hub)
        hub.onCallSignal { [weak self] signal in
            self?.callSignalDelivered(signal)
        }
        hub.onEvict { [weak self] sessions, room in
            guard let self else { return }
            let task = Task { await self.evict(sessions, room: room) }
            self.evictions.withLock { tasks in
                // Evictions from other instances' kicks are never awaited here: keep few.
                if tasks.count >= 64 { tasks.removeFirst(32) }
                tasks.append(task)
            }
        }
    }

    // MARK: Sessions

    /// Opens a session for an authenticated identity; events for it are queued on `outbox`
    /// (a new one bounded by `limits.maxOutboxBytes` when nil). Fails with `unavailable`
    /// while the server shuts down.
    /// A `watcher` session follows rooms without being present in them.
    /// `notifications`: the session also receives the events addressed to its user (`notify`:
    /// direct messages and mentions), through the user's channel; a watcher never does.
    public func connect(
        _ identity: Identity, transport: String, encoder: any EventEncoder, outbox: Outbox? = nil, watcher: Bool = false,
        notifications: Bool = false
    ) throws(ParleyError) -> Session {
        guard !isDraining else { throw .unavailable("server is shutting down") }
        let number = sessionCounter.wrappingAdd(1, ordering: .relaxed).newValue
        let session = Session(
            id: "\(instanceID)-\(number)", identity: identity, transport: transport, encoder: encoder,
            outbox: outbox ?? Outbox(maxBytes: limits.maxOutboxBytes), limits: limits, now: clock.instant, isWatcher: watcher
        )
        sessions.withLock { $0[ObjectIdentifier(session)] = session }
        metrics.connection(transport)?.increment()
        if notifications, !watcher {
            session.setInUserChannel()
            if hub.addToUserChannel(session) {
                // Interest is counted, so this may land after a quick disconnect's `false`.
                let room = UserChannel.room(of: session.user)
                Task { try? await self.broker.setInterest(room: room, true) }
            }
        }
        return session
    }

    /// Ends a session: leaves its rooms (emitting `leave` where it was the user's last).
    public func disconnect(_ session: Session) async {
        session.outbox.close(.goingAway)
        await cancelCalls(of: session)
        if session.endVisibility() { try? await presence.setVisible(user: session.user, session: session.id, false) }
        for room in session.removeAllRooms() {
            await removeMembership(session, room: room)
        }
        if session.leaveUserChannel() {
            let room = UserChannel.room(of: session.user)
            if hub.remove(session, room: room).roomEmpty { try? await broker.setInterest(room: room, false) }
        }
        if sessions.withLock({ $0.removeValue(forKey: ObjectIdentifier(session)) }) != nil {
            metrics.connection(session.transport)?.decrement()
        }
    }

    /// Replaces a session's credential with a fresh one for the same user (`forbidden`
    /// otherwise): its expiry and room patterns change, and rooms the new credential no
    /// longer allows are left.
    public func refresh(_ session: Session, with identity: Identity) async throws(ParleyError) {
        try session.refresh(identity)
        for room in session.rooms where !identity.mayAccess(room) {
            try? await leave(session, room: room)
        }
    }

    public var sessionCount: Int { sessions.withLock { $0.count } }

    /// True once shutdown began: new sessions are refused.
    public var isDraining: Bool { draining.load(ordering: .relaxed) }

    /// Runs `body` with a `Wakeup` that is poked the moment draining starts.
    public func watchingDrain<T>(_ body: (Wakeup) async throws -> T) async rethrows -> T {
        let wakeup = Wakeup()
        drainWatchers.withLock { $0[ObjectIdentifier(wakeup)] = wakeup }
        defer { drainWatchers.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(wakeup)) } }
        if isDraining { wakeup.poke() }
        return try await body(wakeup)
    }

    // MARK: Rooms

    public struct JoinAck: Sendable {
        public var room: String
        /// The room's last seq when the join took effect.
        public var seq: Int64
        /// The first page of the room's users (`Limits.presencePageSize`).
        public var users: [PresenceEntry]
        /// Users in the room in all.
        public var online: Int
        /// More users than `users` holds: page on with `presence` `after`.
        public var hasMore: Bool

        public init(room: String, seq: Int64, users: [PresenceEntry], online: Int, hasMore: Bool) {
            self.room = room
            self.seq = seq
            self.users = users
            self.online = online
            self.hasMore = hasMore
        }
    }

    /// One page of a room's users, sorted by id.
    public struct PresencePage: Sendable {
        public var room: String
        public var users: [PresenceEntry]
        public var online: Int
        public var hasMore: Bool

        public init(room: String, users: [PresenceEntry], online: Int, hasMore: Bool) {
            self.room = room
            self.users = users
            self.online = online
            self.hasMore = hasMore
        }
    }

    /// Joins a room. `onJoined` runs once membership is in place and before any replayed
    /// message is queued, so a transport can queue its ack first. With `since`, every stored
    /// message after it is then queued in order, followed seamlessly by live ones.
    /// Joining a room already joined answers the ack again and replays nothing.
    public func join(
        _ session: Session, room: String, since: Int64?, onJoined: (JoinAck) -> Void
    ) async throws {
        let room = try Validation.room(room, limits: limits)
        try session.identity.authorize(room, at: clock.now)
        let since = try Validation.seq(since, field: "since")
        try await checkNotBanned(session.identity, room: room)
        guard try session.addRoom(room, limit: limits.maxRoomsPerConnection) else {
            let last = try await storeCall { try await self.store.lastSeq(room: room) }
            onJoined(joinAck(room: room, seq: last, everyone: try await members(of: room)))
            return
        }
        let position: Hub.Position
        let everyone: [PresenceEntry]
        do {
            position = try await hub.add(session, room: room, since: since)
            metrics.members.increment()
            if position.roomCreated {
                metrics.rooms.increment()
                try await broker.setInterest(room: room, true)
            }
            var arrived = false
            if !session.isWatcher {
                arrived = try await presence.add(room: room, user: session.user, session: session.id, at: clock.now)
            }
            everyone = try await members(of: room)
            if arrived {
                try await announce(.join(room: room, user: session.user, timestamp: clock.now), online: everyone.count)
                await recordWebhook(WebhookDraft(kind: .join, room: room, user: session.user, timestamp: clock.now))
            }
        } catch {
            _ = session.removeRoom(room)
            await removeMembership(session, room: room)
            throw wrap(error)
        }
        onJoined(joinAck(room: room, seq: position.lastSeq, everyone: everyone))
        if position.catchingUp, let since {
            try await storeCall { try await self.hub.catchUp(session, room: room, from: since) }
        }
        if !session.isWatcher, !session.identity.isBackend {
            // The room joins the user's list, read up to where they join (or resume) it.
            await list(room, for: session.user, readSeq: min(since ?? position.lastSeq, position.lastSeq))
        }
    }

    /// A banned user may not join, watch or read the room.
    private func checkNotBanned(_ identity: Identity, room: String) async throws {
        guard !identity.mayModerate, !UserChannel.isUserChannel(room) else { return }
        let sanction = try await storeCall { try await self.store.sanction(room: room, user: identity.user) }
        if let refusal = sanction?.refusesJoining(room: room, at: clock.now) { throw refusal }
    }

    /// Takes the sessions of a user that a kick or ban row (just delivered to them) names out of
    /// the room, on this instance.
    func evict(_ sessions: [Session], room: String) async {
        for session in sessions where session.removeRoom(room) {
            await removeMembership(session, room: room)
        }
    }

    /// Waits for the evictions started so far: a kick or ban is in effect on this instance
    /// when the moderator's command completes.
    private func finishEvictions() async {
        let tasks = evictions.withLock { tasks in
            defer { tasks.removeAll() }
            return tasks
        }
        for task in tasks { await task.value }
    }

    /// Puts `room` in `user`'s list unless this instance did already: a rejoin (every
    /// reconnect) or a DM's next message costs no write. A failed write is retried next time.
    private func list(_ room: String, for user: String, readSeq: Int64) async {
        let key = InboxKey(user: user, room: room)
        guard !listedHere.withLock({ $0.contains(key) }), await addToInbox(user: user, room: room, readSeq: readSeq) else { return }
        listedHere.withLock { listed in
            if listed.count >= 100_000 { listed.removeAll() }
            listed.insert(key)
        }
    }

    private struct InboxKey: Hashable {
        var user: String
        var room: String
    }

    /// Puts the room in the user's list; false when the store could not (logged, not thrown:
    /// the join or post it follows went through).
    private func addToInbox(user: String, room: String, readSeq: Int64) async -> Bool {
        do {
            try await store.addToInbox(user: user, room: room, readSeq: readSeq)
            return true
        } catch {
            logger.debug("could not list the room for the user", metadata: ["room": "\(room)", "error": "\(error)"])
            return false
        }
    }

    /// Messages with every word of `text` (`SearchTerms`), newest first, in the rooms
    /// `identity` may read (never another pair's DM, never a room a `rooms` claim leaves out),
    /// older than the message `before` when given. Pages of the store are read until `limit`
    /// readable ones are found, at most ten pages.
    public func search(_ identity: Identity, text: String, before: String?, limit: Int?) async throws -> HistoryPage {
        try identity.ensureCurrent(at: clock.now)
        let terms = SearchTerms.words(text)
        guard !terms.isEmpty else { throw ParleyError.badRequest("search: text must contain a word") }
        let limit = try Validation.historyLimit(limit, limits: limits)
        if let before, before.isEmpty || before.utf8.count > 64 { throw ParleyError.badRequest("search: before must be a message id") }
        var found: [Message] = []
        var cursor = before
        for _ in 0..<10 {
            let page = try await storeCall { try await self.store.search(terms: terms, before: cursor, limit: limit + 1) }
            for message in page where identity.mayAccess(message.room) && found.count <= limit { found.append(message) }
            guard page.count == limit + 1, found.count <= limit, let last = page.last else { break }
            cursor = last.id
        }
        let hasMore = found.count > limit
        return HistoryPage(messages: Array(found.prefix(limit)), hasMore: hasMore)
    }

    /// The rooms of `identity`'s user, with the last message, read position and unread counts
    /// of each (the rooms it joined and its direct-message rooms), as far as the credential may
    /// read them.
    public func inbox(_ identity: Identity) async throws -> [InboxEntry] {
        try identity.ensureCurrent(at: clock.now)
        return try await storeCall { try await self.store.inbox(user: identity.user) }.filter { identity.mayAccess($0.room) }
    }

    private func joinAck(room: String, seq: Int64, everyone: [PresenceEntry]) -> JoinAck {
        let page = everyone.prefix(limits.presencePageSize)
        return JoinAck(room: room, seq: seq, users: Array(page), online: everyone.count, hasMore: page.count < everyone.count)
    }

    /// Sends a join or leave to the room, or, in a large room, keeps it for the next presence
    /// update. `online`: the room's users now, when known.
    private func announce(_ event: ServerEvent, online: Int?) async throws {
        let room = event.room
        let batched = largeRooms.withLock { rooms -> Bool in
            guard limits.largeRoomSize > 0 else { return false }
            if let online, online > limits.largeRoomSize { rooms.insert(room) }
            return rooms.contains(room)
        }
        guard batched else {
            try await publishToBroker(event)
            return
        }
        let now = clock.instant
        presenceChanges.withLock { changes in
            var pending = changes[room] ?? PresenceChanges(since: now)
            switch event {
            case .join(_, let user, _):
                if pending.left.remove(user) == nil { pending.joined.insert(user) }
            case .leave(_, let user, _):
                if pending.joined.remove(user) == nil { pending.left.insert(user) }
            default:
                break
            }
            changes[room] = pending
        }
    }

    /// Publishes the presence updates of large rooms whose changes waited out the interval; a
    /// room that is no longer large goes back to one event per join and leave.
    private func publishPresenceUpdates(now: ContinuousClock.Instant) async {
        let due = presenceChanges.withLock { changes -> [(String, PresenceChanges)] in
            let due = changes.filter { now - $0.value.since >= limits.presenceUpdateInterval }
            for (room, _) in due { changes[room] = nil }
            return due.map { ($0.key, $0.value) }
        }
        for (room, pending) in due {
            guard let online = try? await presence.members(room: room).count else { continue }
            if online <= limits.largeRoomSize { largeRooms.withLock { _ = $0.remove(room) } }
            guard !pending.joined.isEmpty || !pending.left.isEmpty else { continue }
            try? await publishToBroker(.presence(
                room: room, online: online,
                joined: Array(pending.joined.sorted().prefix(Self.namedPresenceChanges)),
                left: Array(pending.left.sorted().prefix(Self.namedPresenceChanges))
            ))
        }
    }

    /// Users named in one presence update, per direction (enough for "Ann, Bo and 40 others
    /// joined"); `online` counts them all and `presence` pages through everyone. Every member
    /// of the room receives each update, so this is what an update costs in bytes.
    static let namedPresenceChanges = 20

    public func leave(_ session: Session, room: String) async throws {
        let room = try Validation.room(room, limits: limits)
        guard session.removeRoom(room) else { throw ParleyError(.notFound, "not a member of room \(room)") }
        await removeMembership(session, room: room)
    }

    private func removeMembership(_ session: Session, room: String) async {
        let (removed, roomEmpty) = hub.remove(session, room: room)
        if removed { metrics.members.decrement() }
        if roomEmpty {
            metrics.rooms.decrement()
            try? await broker.setInterest(room: room, false)
        }
        guard !session.isWatcher else { return }
        do {
            if try await presence.remove(room: room, user: session.user, session: session.id) {
                await setTyping(room: room, user: session.user, false, leaving: true)
                try await announce(.leave(room: room, user: session.user, timestamp: clock.now), online: nil)
                await recordWebhook(WebhookDraft(kind: .leave, room: room, user: session.user, timestamp: clock.now))
            }
        } catch {
            logger.warning("presence update failed", metadata: ["room": "\(room)", "error": "\(error)"])
        }
    }

    // MARK: Webhooks

    /// Puts a join, leave or read in the webhook outbox (rows of history enter it with their
    /// commit). A failure is logged: the event it follows happened.
    private func recordWebhook(_ draft: WebhookDraft) async {
        guard let webhooks, webhooks.selection.selects(draft.kind) else { return }
        do {
            try await webhooks.outbox.enqueueWebhooks([draft])
            webhooks.notify()
        } catch {
            logger.warning("could not queue a webhook", metadata: ["room": "\(draft.room)", "kind": "\(draft.kind.rawValue)", "error": "\(error)"])
        }
    }

    // MARK: Publishing

    /// Stores a message and fans it out. Returns the stored message (the original one, marked
    /// `duplicate`, for an idempotent retry). `session` is the connection it came through, for its rate limit.
    /// `onStored` runs once the message is durably stored and before it is fanned out, so a
    /// transport can queue the sender's ack ahead of the deliveries to the room.
    @discardableResult
    public func publish(
        _ identity: Identity, as user: String? = nil, room: String, content: String, clientId: String?, replyTo: String? = nil,
        attachments: [String] = [], session: Session? = nil, onStored: (AppendResult) -> Void = { _ in }
    ) async throws -> AppendResult {
        let room = try Validation.room(room, limits: limits)
        try identity.authorize(room, at: clock.now)
        // A session posts as its own user, also a backend's session that named its user.
        let author = try postingUser(identity, requested: user ?? session?.user)
        // A message that shares files may have no text (a voice message, a photo).
        let content = attachments.isEmpty || content.contains(where: { !$0.isWhitespace }) ? try Validation.content(content, limits: limits) : ""
        let attachmentIDs = try attachments.map { id throws(ParleyError) in try Validation.messageID(id, field: "attachments") }
        if !attachmentIDs.isEmpty, self.attachments == nil { throw ParleyError.badRequest("attachments are turned off") }
        let clientId = try Validation.clientId(clientId, limits: limits)
        let replyTo = try replyTo.map { id throws(ParleyError) in try Validation.messageID(id, field: "replyTo") }
        let draft = MessageDraft(
            room: room, user: author, content: content, timestamp: clock.now, clientId: clientId, replyTo: replyTo,
            privileged: identity.mayModerate
        )
        // A backend's own posts skip the publish hook: the backend is who the hook asks.
        return try await submit(draft, attachmentIDs: attachmentIDs, session: session, gated: !identity.isBackend, onStored: onStored)
    }

    /// A moderator's (or a backend's) action on `user` in `room`: `.kick` takes their sessions
    /// out of the room, `.mute` lets them read but not post, `.ban` keeps them out (both for
    /// `duration`, or for good when nil), `.unmute` and `.unban` lift those. Stored as a row of
    /// the room (in history for audit, delivered to its members, the user acted on included,
    /// before they are taken out) and in force on every instance from the next post or join.
    @discardableResult
    public func moderate(
        _ identity: Identity, as moderator: String? = nil, room: String, user: String, action: MessageKind, duration: Duration? = nil,
        reason: String? = nil, clientId: String? = nil, session: Session? = nil, onStored: (AppendResult) -> Void = { _ in }
    ) async throws -> AppendResult {
        let room = try Validation.room(room, limits: limits)
        try identity.authorize(room, at: clock.now)
        guard identity.mayModerate else { throw ParleyError(.forbidden, "only a moderator may kick, mute or ban") }
        guard action.isModeration else { throw ParleyError.badRequest("action must be kick, mute, unmute, ban or unban") }
        let author = try postingUser(identity, requested: moderator ?? session?.user)
        let target = try Validation.user(user, limits: limits)
        if let duration, duration <= .zero || !(action == .mute || action == .ban) {
            throw ParleyError.badRequest("seconds: a positive duration, for mute and ban only")
        }
        let reason = try reason.map { text throws(ParleyError) in try Validation.content(text, limits: limits) } ?? ""
        let now = clock.now
        let moderation = Moderation(action: action, user: target, until: duration.map { now.adding(milliseconds: $0.milliseconds) })
        let draft = MessageDraft(
            room: room, user: author, content: reason, timestamp: now, clientId: try Validation.clientId(clientId, limits: limits),
            moderation: moderation, privileged: true
        )
        return try await submit(draft, session: session, onStored: onStored)
    }

    /// Changes the message `target` of `room`: edits it (`content` is the new content),
    /// deletes it, or adds, removes or toggles the reaction `content`. The change is stored as
    /// the room's next event and delivered like a message; the result's `target` is the message
    /// as it is now. Authors edit and delete their own messages (edits within
    /// `limits.editWindow`); a moderator or a backend may delete anyone's. A change that changes nothing (a
    /// second delete, a reaction already there) stores and delivers nothing
    /// (`duplicate`). It costs a publish token.
    @discardableResult
    public func change(
        _ identity: Identity, as user: String? = nil, room: String, target: String, action: MessageChange.Action, content: String = "",
        clientId: String? = nil, session: Session? = nil, onStored: (AppendResult) -> Void = { _ in }
    ) async throws -> AppendResult {
        let room = try Validation.room(room, limits: limits)
        try identity.authorize(room, at: clock.now)
        let author = try postingUser(identity, requested: user ?? session?.user)
        let target = try Validation.messageID(target)
        let content: String = switch action {
        case .edit: try Validation.content(content, limits: limits)
        case .delete: ""
        case .react: try Validation.emoji(content)
        }
        let clientId = try Validation.clientId(clientId, limits: limits)
        let change = MessageChange(target: target, action: action, editWindow: limits.editWindow, maxReactions: limits.maxReactions)
        let draft = MessageDraft(
            room: room, user: author, content: content, timestamp: clock.now, clientId: clientId, change: change, privileged: identity.mayModerate
        )
        return try await submit(draft, session: session, onStored: onStored)
    }

    // MARK: Calls

    public struct CallStart: Sendable, Hashable {
        public var call: String
        public var iceServers: [ICEServer]

        public init(call: String, iceServers: [ICEServer]) {
            self.call = call
            self.iceServers = iceServers
        }
    }

    /// Calls `callee` from `session`: every session of the callee rings (a `ring` signal with
    /// the ICE servers), on any instance. Unanswered after `ringTime`, the call ends as missed
    /// for both, and a "Missed call" message goes into their direct-message room.
    public func startCall(_ session: Session, callee: String, video: Bool) async throws -> CallStart {
        try session.identity.ensureCurrent(at: clock.now)
        let callee = try Validation.user(callee, limits: limits)
        guard callee != session.user else { throw ParleyError.badRequest("you cannot call yourself") }
        // Whom one may message directly, one may call.
        try session.identity.authorize(DirectRoom.name(session.user, callee), at: clock.now)
        let call = CallID(caller: session.user, callerSession: session.id, callee: callee, started: clock.now, video: video)
        let id = call.signed(with: try await callSecret())
        let timer = clock.schedule(in: Self.ringTime) { [weak self] in
            Task { await self?.callMissed(id) }
        }
        ringing.withLock { $0[id] = (call, timer) }
        metrics.callsStarted.increment()
        try await publishToBroker(.call(CallSignal(
            call: id, kind: .ring, from: session.user, fromSession: session.id, to: callee, video: video,
            iceServers: ice.servers(for: callee, at: clock.now)
        )))
        push?.enqueue(PushNotification(
            kind: .call, user: callee, room: DirectRoom.name(session.user, callee), from: session.user, call: id, video: video
        ))
        return CallStart(call: id, iceServers: ice.servers(for: session.user, at: clock.now))
    }

    /// Relays a step of a call between its two parties. The caller may `cancel`, `hangup` and
    /// send `offer` and `candidate` (to the session that accepted: `toSession`); the callee
    /// may `accept`, `decline`, `busy`, `hangup` and send `answer` and `candidate` (always to
    /// the caller's session). Anyone else is `forbidden`: the call id is signed.
    public func signal(_ session: Session, call id: String, kind: CallSignal.Kind, data: String?, toSession: String?) async throws {
        try session.identity.ensureCurrent(at: clock.now)
        guard let call = CallID(id, secret: try await callSecret()) else { throw ParleyError(.notFound, "no such call") }
        guard clock.now.milliseconds - call.started.milliseconds < 24 * 3_600_000 else { throw ParleyError(.notFound, "the call is over") }
        if let data, data.utf8.count > CallSignal.maxData { throw ParleyError(.tooLarge, "data is larger than \(CallSignal.maxData) bytes") }
        let isCaller = session.user == call.caller && session.id == call.callerSession
        let isCallee = session.user == call.callee
        let allowed: Set<CallSignal.Kind> = isCaller ? [.cancel, .hangup, .offer, .candidate] : isCallee ? [.accept, .decline, .busy, .hangup, .answer, .candidate] : []
        guard !allowed.isEmpty else { throw ParleyError(.forbidden, "not a party to this call") }
        guard allowed.contains(kind) else { throw ParleyError.badRequest("type '\(kind.rawValue)' is not yours to send in this call") }
        let to = isCaller ? call.callee : call.caller
        let target = isCaller ? toSession : call.callerSession
        try await publishToBroker(.call(CallSignal(
            call: id, kind: kind, from: session.user, fromSession: session.id, to: to, toSession: target, data: data, video: call.video
        )))
        if isCallee, [.accept, .decline, .busy].contains(kind) {
            // The callee's other sessions stop ringing.
            try await publishToBroker(.call(CallSignal(
                call: id, kind: .answered, from: session.user, fromSession: session.id, to: session.user, exceptSession: session.id, video: call.video
            )))
        }
        callSignalDelivered(CallSignal(call: id, kind: kind, from: session.user, fromSession: session.id, to: to))
    }

    /// A call that is answered, refused or ended stops ringing here.
    private func callSignalDelivered(_ signal: CallSignal) {
        guard [.accept, .decline, .busy, .cancel, .hangup, .missed].contains(signal.kind) else { return }
        ringing.withLock { $0.removeValue(forKey: signal.call) }?.timer.cancel()
    }

    private func callMissed(_ id: String) async {
        guard let (call, _) = ringing.withLock({ $0.removeValue(forKey: id) }) else { return }
        metrics.callsMissed.increment()
        for (to, session) in [(call.caller, Optional(call.callerSession)), (call.callee, nil)] {
            try? await publishToBroker(.call(CallSignal(
                call: id, kind: .missed, from: call.caller, fromSession: call.callerSession, to: to, toSession: session, video: call.video
            )))
        }
        do {
            try await publish(
                Identity(user: call.caller, isBackend: true), as: call.caller, room: DirectRoom.name(call.caller, call.callee),
                content: call.video ? "📹 Missed video call" : "📞 Missed call", clientId: "missed-\(call.nonce)"
            )
        } catch {
            logger.warning("could not post a missed call", metadata: ["error": "\(error)"])
        }
    }

    /// A caller that goes away while its call rings cancels it.
    private func cancelCalls(of session: Session) async {
        let calls = ringing.withLock { ringing in
            let mine = ringing.filter { $0.value.call.callerSession == session.id }
            for (id, entry) in mine {
                entry.timer.cancel()
                ringing[id] = nil
            }
            return mine
        }
        for (id, entry) in calls {
            try? await publishToBroker(.call(CallSignal(
                call: id, kind: .cancel, from: session.user, fromSession: session.id, to: entry.call.callee, video: entry.call.video
            )))
        }
    }

    /// The cluster's secret for signing call ids, created once in the store.
    private func callSecret() async throws -> [UInt8] {
        if let secret = callSecretCache.withLock({ $0 }) { return secret }
        let secret = try await storeCall { try await self.store.sharedSecret(named: "calls") }
        callSecretCache.withLock { $0 = secret }
        return secret
    }

    // MARK: Web Push

    private func pushNotifier() throws(ParleyError) -> PushNotifier {
        guard let push else { throw ParleyError(.notFound, "Web Push is off on this server") }
        return push
    }

    /// The VAPID public key browsers subscribe with (`applicationServerKey`).
    public func pushPublicKey() async throws -> [UInt8] {
        let push = try pushNotifier()
        return try await storeCall { try await push.vapidKey() }.publicKey
    }

    /// Keeps a browser's subscription for `identity`'s user (a user may have
    /// `maxPushSubscriptions`; a new one beyond that replaces the oldest).
    public func subscribePush(_ identity: Identity, endpoint: String, p256dh: String, auth: String) async throws {
        let push = try pushNotifier()
        try identity.ensureCurrent(at: clock.now)
        let subscription = try PushSubscription.checked(
            user: identity.user, endpoint: endpoint, p256dh: p256dh, auth: auth, services: push.configuration.services
        )
        try await storeCall {
            try await self.store.addPushSubscription(subscription)
            let all = try await self.store.pushSubscriptions(user: identity.user)
            for old in all.prefix(max(0, all.count - Self.maxPushSubscriptions)) where old.endpoint != endpoint {
                try await self.store.removePushSubscription(endpoint: old.endpoint, user: identity.user)
            }
        }
    }

    /// Most subscriptions (browsers) one user keeps.
    public static let maxPushSubscriptions = 10

    /// The user's subscriptions (browsers that are pushed to), oldest first.
    public func pushSubscriptions(_ identity: Identity) async throws -> [PushSubscription] {
        _ = try pushNotifier()
        try identity.ensureCurrent(at: clock.now)
        return try await storeCall { try await self.store.pushSubscriptions(user: identity.user) }
    }

    /// Deletes the user's subscription at `endpoint`; `not_found` when they have none there.
    public func unsubscribePush(_ identity: Identity, endpoint: String) async throws {
        _ = try pushNotifier()
        try identity.ensureCurrent(at: clock.now)
        let removed = try await storeCall { try await self.store.removePushSubscription(endpoint: endpoint, user: identity.user) }
        if !removed { throw ParleyError(.notFound, "no push subscription of yours at that endpoint") }
    }

    /// The rooms whose pushes the user muted (`PushSettings.everyRoom`: all of them).
    public func pushMutes(_ identity: Identity) async throws -> Set<String> {
        try identity.ensureCurrent(at: clock.now)
        return try await storeCall { try await self.store.pushMutes(user: identity.user) }
    }

    /// Replaces the rooms whose pushes the user muted: room names, or `*` for every room.
    public func setPushMutes(_ identity: Identity, rooms: [String]) async throws -> Set<String> {
        try identity.ensureCurrent(at: clock.now)
        guard rooms.count <= 1000 else { throw ParleyError(.tooLarge, "at most 1000 muted rooms") }
        var muted: Set<String> = []
        for room in rooms {
            muted.insert(room == PushSettings.everyRoom ? room : try Validation.room(room, limits: limits))
        }
        let settled = muted
        try await storeCall { try await self.store.setPushMutes(user: identity.user, rooms: settled) }
        return muted
    }

    /// What the client says of itself: whether it shows Parley to its user now (a browser tab
    /// in front). A user with a visible session is not pushed; a session that never says is
    /// not visible.
    public func setVisible(_ session: Session, _ visible: Bool) async throws {
        guard !session.isWatcher, let change = session.setVisible(visible) else { return }
        do {
            try await storeCall { try await self.presence.setVisible(user: session.user, session: session.id, change) }
        } catch {
            // Not recorded: the session is as it was, so the client's retry is a change again.
            _ = session.setVisible(!change)
            throw error
        }
        // A disconnect that ran meanwhile may have come first: then the entry is removed again.
        if change, session.hasEnded { try? await presence.setVisible(user: session.user, session: session.id, false) }
    }

    // MARK: Attachments

    /// Stores an upload to `room` (the bytes of `body`, at most `limits.maxAttachmentBytes`;
    /// `declaredLength`, when the request says, is checked before a byte is read). Counted
    /// against the user's daily quota (`rate_limited` with a retry time when spent). The file
    /// is the uploader's to put in a message of the room; unused, it is deleted after
    /// `limits.orphanAttachmentLifetime`.
    public func upload(
        _ identity: Identity, as user: String? = nil, room: String, name: String, duration: Int?, declaredLength: Int64?,
        body: some AsyncSequence<ByteBuffer, any Error> & Sendable
    ) async throws -> Attachment {
        guard let attachments else { throw ParleyError(.notFound, "attachments are turned off") }
        let room = try Validation.room(room, limits: limits)
        try identity.authorize(room, at: clock.now)
        let uploader = try postingUser(identity, requested: user)
        if let declaredLength, declaredLength > limits.maxAttachmentBytes {
            throw ParleyError(.tooLarge, "the file is larger than \(limits.maxAttachmentBytes) bytes")
        }
        if !identity.mayModerate, let refusal = try await storeCall({ try await self.store.sanction(room: room, user: uploader) })?
            .refusesPosting(room: room, at: clock.now)
        {
            throw refusal
        }
        if limits.attachmentQuotaPerDay > 0, !identity.isBackend {
            let used = try await attachments.bytesUploaded(by: uploader, since: clock.now.adding(milliseconds: -86_400_000))
            if used + (declaredLength ?? 1) > limits.attachmentQuotaPerDay {
                throw ParleyError(
                    .rateLimited, "the daily upload quota of \(limits.attachmentQuotaPerDay) bytes is spent; retry later", retryAfterMs: 3_600_000
                )
            }
        }
        let duration = duration.map { max(0, min($0, 24 * 3_600_000)) }
        let upload = UploadRequest(
            room: room, user: uploader, name: name, duration: duration, maxBytes: limits.maxAttachmentBytes, timestamp: clock.now
        )
        return try await attachments.store(upload, body: body)
    }

    /// The attachment `id`, for a reader who may read its room.
    public func attachment(_ identity: Identity, id: String) async throws -> Attachment {
        guard let attachments else { throw ParleyError(.notFound, "attachments are turned off") }
        guard let attachment = try await attachments.attachment(id: try Validation.messageID(id)) else {
            throw ParleyError(.notFound, "no attachment '\(id)'")
        }
        try identity.authorize(attachment.room, at: clock.now)
        try await checkNotBanned(identity, room: attachment.room)
        // An upload not yet in a message is its uploader's only.
        if attachment.message == nil, attachment.user != identity.user, !identity.isBackend {
            throw ParleyError(.notFound, "no attachment '\(id)'")
        }
        return attachment
    }

    /// Deletes the uploads never put in a message within `limits.orphanAttachmentLifetime`.
    func deleteOrphanAttachments() async {
        guard let attachments else { return }
        do {
            let deleted = try await attachments.deleteOrphans(uploadedBefore: clock.now.adding(milliseconds: -limits.orphanAttachmentLifetime.milliseconds))
            if deleted > 0 { logger.info("deleted unused uploads", metadata: ["count": "\(deleted)"]) }
        } catch {
            logger.warning("deleting unused uploads failed", metadata: ["error": "\(error)"])
        }
    }

    /// Stores a checked draft and delivers it: the publish path of messages and changes alike.
    private func submit(
        _ draft: MessageDraft, attachmentIDs: [String] = [], session: Session?, gated: Bool = false, onStored: (AppendResult) -> Void
    ) async throws -> AppendResult {
        var draft = draft
        let room = draft.room
        // A connection has its own bucket; calls without one (HTTP) share one per user; and
        // every publish of a user also takes from that user's bucket, whatever it came through.
        let connectionWait = if let session { session.takeRateToken(now: clock.instant) } else { takeSessionlessRateToken(draft.user) }
        let wait = connectionWait ?? takeUserRateToken(draft.user)
        if let wait {
            metrics.rateLimited.increment()
            throw ParleyError(.rateLimited, "publishing too fast; retry in \(wait) ms", retryAfterMs: wait)
        }
        if gated, let publishGate { try await publishGate.check(draft, attachments: attachmentIDs) }
        if let attachments, !attachmentIDs.isEmpty {
            draft.attachments = try await attachments.attachForPublish(
                ids: attachmentIDs, room: room, user: draft.user, message: draft.id, clientId: draft.clientId
            )
        }
        let started = ContinuousClock.now
        let stored = draft
        let result: AppendResult
        do {
            result = try await storeCall { try await self.store.append(stored) }
        } catch {
            if !draft.attachments.isEmpty { try? await attachments?.detach(message: draft.id) }
            throw error
        }
        metrics.appendLatency.recordNanoseconds((ContinuousClock.now - started).nanoseconds)
        (result.duplicate ? metrics.duplicates : metrics.published).increment()
        onStored(result)
        if !result.duplicate {
            if let webhooks, webhooks.selection.selects(WebhookKind(result.message.kind)) { webhooks.notify() }
            do {
                try await publishToBroker(.message(result.message))
            } catch {
                // Stored is stored: members get it through the hub's gap fill.
                logger.warning("broker publish failed", metadata: ["room": "\(room)", "error": "\(error)"])
            }
            if result.message.kind == .kick || result.message.kind == .ban { await finishEvictions() }
            if result.message.kind == .delete, let target = result.message.target {
                // A deleted message's files go with it (a failure leaves them for no one to reach).
                try? await attachments?.deleteAttachments(of: target)
            }
            guard result.message.kind == .message else { return result }
            if let (a, b) = DirectRoom.participants(room) {
                // A DM is in both users' lists from its first message.
                await list(room, for: a, readSeq: 0)
                if b != a { await list(room, for: b, readSeq: 0) }
            }
            for (user, kind) in Mentions.notifications(for: result.message, limits: limits) {
                // Best effort, like typing: a client also learns of it from its room listing.
                try? await publishToBroker(.notify(user: user, kind: kind, message: result.message))
                let message = result.message
                push?.enqueue(PushNotification(
                    kind: kind == .direct ? .direct : .mention, user: user, room: room, from: message.user,
                    body: message.content.isEmpty && !message.attachments.isEmpty ? "📎 " + message.attachments[0].name : message.content,
                    message: message.id, seq: message.seq
                ))
            }
        }
        return result
    }

    private func publishToBroker(_ event: ServerEvent) async throws {
        metrics.brokerPublished.increment()
        do {
            try await broker.publish(event)
        } catch {
            throw wrap(error)
        }
    }

    /// Takes a publish token from the user's sessionless bucket: nil when allowed, else
    /// milliseconds to wait.
    private func takeSessionlessRateToken(_ user: String) -> Int? {
        let now = clock.instant
        return sessionlessRates.withLock { rates in
            rates[user, default: TokenBucket(rate: limits.ratePerSecond, burst: limits.rateBurst, now: now)].take(now: now)
        }
    }

    /// Takes a publish token from the user's bucket shared by all of their connections.
    private func takeUserRateToken(_ user: String) -> Int? {
        let (rate, burst) = limits.effectiveUserRate
        guard rate > 0 else { return nil }
        let now = clock.instant
        return userRates.withLock { rates in rates[user, default: TokenBucket(rate: rate, burst: burst, now: now)].take(now: now) }
    }

    /// Forgets the rate buckets of users idle long enough for their bucket to be full again.
    func forgetIdleRates() {
        func idle(_ rate: Double, _ burst: Double) -> Duration { .seconds(rate > 0 ? max(1, burst / rate) : 0) }
        let now = clock.instant
        let sessionless = idle(limits.ratePerSecond, limits.rateBurst)
        sessionlessRates.withLock { rates in rates = rates.filter { !$0.value.isFull(after: sessionless, now: now) } }
        let user = idle(limits.effectiveUserRate.perSecond, limits.effectiveUserRate.burst)
        userRates.withLock { rates in rates = rates.filter { !$0.value.isFull(after: user, now: now) } }
        let commands = idle(limits.commandRatePerSecond, limits.commandBurst)
        sessionlessBudgets.withLock { budgets in budgets = budgets.filter { !$0.value.isFull(after: commands, now: now) } }
    }

    private func postingUser(_ identity: Identity, requested: String?) throws(ParleyError) -> String {
        if identity.isBackend, requested == nil {
            throw ParleyError.badRequest("a backend call must name its author with 'user'")
        }
        guard let requested, requested != identity.user else { return identity.user }
        guard identity.isBackend else {
            throw ParleyError(.forbidden, "only a backend may post as another user")
        }
        return try Validation.user(requested, limits: limits)
    }

    // MARK: Command budget

    /// Charges a command to its connection's budget (`limits.commandRatePerSecond`): join,
    /// leave and presence cost 1, a history page 1 plus one per 25 messages asked for (a page
    /// is the most expensive thing a client can ask for). `rate_limited` with `retryAfterMs`
    /// when the budget is spent. Publishing has its own buckets; typing and read receipts are
    /// coalesced, never refused.
    public func charge(_ session: Session, historyLimit: Int? = nil) throws(ParleyError) {
        try refuse(wait: session.takeCommandTokens(commandCost(historyLimit: historyLimit), now: clock.instant))
    }

    /// Charges a read that comes without a session (HTTP API, gRPC unary calls), at the same
    /// rates: a user's to that user's budget, an `anonymous` one (open mode, no credential) to
    /// its client address's (nil: unknown, one shared budget). A backend holding an API key is
    /// trusted and not limited; behind a proxy every anonymous reader shares the proxy's address.
    public func charge(reader: Identity, anonymous: Bool, address: String?, historyLimit: Int? = nil) throws(ParleyError) {
        if reader.isBackend, !anonymous { return }
        let key = anonymous ? "address:\(address ?? "")" : "user:\(reader.user)"
        let cost = commandCost(historyLimit: historyLimit)
        let now = clock.instant
        try refuse(wait: sessionlessBudgets.withLock { budgets in
            budgets[key, default: TokenBucket(rate: limits.commandRatePerSecond, burst: limits.commandBurst, now: now)].take(cost, now: now)
        })
    }

    private func commandCost(historyLimit: Int?) -> Double {
        historyLimit.map { 1 + Double(min(max($0, 0), limits.maxHistoryLimit)) / 25 } ?? 1
    }

    private func refuse(wait: Int?) throws(ParleyError) {
        guard let wait else { return }
        metrics.rateLimited.increment()
        throw ParleyError(.rateLimited, "too many requests; retry in \(wait) ms", retryAfterMs: wait)
    }

    // MARK: Typing and receipts

    public func typing(_ session: Session, room: String, typing isTyping: Bool) async throws {
        let room = try joinedRoom(session, room)
        await setTyping(room: room, user: session.user, isTyping)
    }

    /// `leaving`: the user's last session left the room; its `typing: false` goes out at once
    /// and nothing of it waits.
    private func setTyping(room: String, user: String, _ isTyping: Bool, leaving: Bool = false) async {
        let now = clock.instant
        let key = TypingKey(room: room, user: user)
        let changed = typing.withLock { typing in
            if isTyping {
                return typing.updateValue(now + limits.typingTimeout, forKey: key) == nil
            }
            return typing.removeValue(forKey: key) != nil
        }
        let send = typingEvents.withLock { events -> Bool? in
            defer { if leaving { events.remove(key) } }
            return changed ? events.offer(key, isTyping, now: now, force: leaving) : nil
        }
        if let send {
            try? await publishToBroker(.typing(room: room, user: user, typing: send))
        }
        if leaving { readEvents.withLock { $0.remove(key) } }
    }

    /// Ends every `typing: true` that was not renewed in time, and sends the typing and read
    /// states that waited out their coalescing window.
    func tick() async {
        let now = clock.instant
        let expired = typing.withLock { typing in
            let keys = typing.filter { $0.value <= now }.map(\.key)
            for key in keys { typing[key] = nil }
            return keys
        }
        for key in expired {
            if let send = typingEvents.withLock({ $0.offer(key, false, now: now) }) {
                try? await publishToBroker(.typing(room: key.room, user: key.user, typing: send))
            }
        }
        for (key, isTyping) in typingEvents.withLock({ $0.due(now: now) }) {
            try? await publishToBroker(.typing(room: key.room, user: key.user, typing: isTyping))
        }
        for (key, seq) in readEvents.withLock({ $0.due(now: now) }) {
            try? await publishToBroker(.read(room: key.room, user: key.user, seq: seq))
        }
        await publishPresenceUpdates(now: now)
    }

    public func read(_ session: Session, room: String, seq: Int64) async throws {
        let room = try joinedRoom(session, room)
        guard let seq = try Validation.seq(seq, field: "seq") else { return }
        if !session.isWatcher, !session.identity.isBackend {
            // Durable before the ack, and at once on the user's other sessions (their badges);
            // never past what the room has, so that later messages still count as unread.
            let position = min(seq, hub.lastDelivered(room: room) ?? seq)
            try await storeCall { try await self.store.markRead(user: session.user, room: room, seq: position) }
            await recordWebhook(WebhookDraft(kind: .read, room: room, user: session.user, seq: position, timestamp: clock.now))
            try? await publishToBroker(.ownRead(user: session.user, room: room, seq: position))
        }
        let key = TypingKey(room: room, user: session.user)
        if let send = readEvents.withLock({ $0.offer(key, seq, now: clock.instant) }) {
            try await publishToBroker(.read(room: room, user: session.user, seq: send))
        }
    }

    private func joinedRoom(_ session: Session, _ room: String) throws(ParleyError) -> String {
        try session.identity.ensureCurrent(at: clock.now)
        let room = try Validation.room(room, limits: limits)
        guard session.isMember(of: room) else { throw ParleyError(.notFound, "not a member of room \(room); join it first") }
        return room
    }

    // MARK: Reading

    public func history(_ identity: Identity, room: String, before: Int64?, after: Int64?, limit: Int?) async throws -> HistoryPage {
        let room = try Validation.room(room, limits: limits)
        try identity.authorize(room, at: clock.now)
        let query = HistoryQuery(
            before: try Validation.seq(before, field: "before"),
            after: try Validation.seq(after, field: "after"),
            limit: try Validation.historyLimit(limit, limits: limits)
        )
        try await checkNotBanned(identity, room: room)
        return try await storeCall { try await self.store.history(room: room, query: query) }
    }

    public func members(of room: String) async throws -> [PresenceEntry] {
        try await storeCall { try await self.presence.members(room: room) }
    }

    /// A page of the room's users, sorted by id: those after `after` (nil: from the first),
    /// at most `limit` (default `limits.presencePageSize`, at most 100 or that).
    public func presence(_ identity: Identity, room: String, after: String? = nil, limit: Int? = nil) async throws -> PresencePage {
        let room = try Validation.room(room, limits: limits)
        try identity.authorize(room, at: clock.now)
        let maxLimit = max(100, limits.presencePageSize)
        if let limit, limit < 1 || limit > maxLimit {
            throw ParleyError.badRequest("limit must be 1..\(maxLimit)")
        }
        let everyone = try await members(of: room)
        let rest = after.map { after in everyone.drop { $0.user <= after } } ?? everyone[...]
        let page = rest.prefix(limit ?? limits.presencePageSize)
        return PresencePage(room: room, users: Array(page), online: everyone.count, hasMore: page.count < rest.count)
    }

    /// Every room with history or presence, with its last seq and online count.
    public func rooms(_ identity: Identity) async throws -> [RoomSummary] {
        try identity.ensureCurrent(at: clock.now)
        let stored = try await storeCall { try await self.store.rooms() }
        let online = try await storeCall { try await self.presence.onlineCounts() }
        var summaries: [String: RoomSummary] = [:]
        for (room, seq) in stored { summaries[room] = RoomSummary(room: room, seq: seq, online: online[room] ?? 0) }
        for (room, count) in online where summaries[room] == nil {
            summaries[room] = RoomSummary(room: room, seq: 0, online: count)
        }
        return summaries.values.filter { identity.mayAccess($0.room) }.sorted { $0.room < $1.room }
    }

    /// The rooms where a user is present, as far as `reader` may see them (a `rooms` claim
    /// hides the rooms it does not allow); empty when offline.
    public func userRooms(_ reader: Identity, user: String) async throws -> [String] {
        try reader.ensureCurrent(at: clock.now)
        let user = try Validation.user(user, limits: limits)
        return try await storeCall { try await self.presence.rooms(user: user) }.filter(reader.mayAccess)
    }

    /// Runs a backend call, turning failures other than `ParleyError` into `unavailable`.
    private func storeCall<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch {
            throw wrap(error)
        }
    }

    /// A `ParleyError` as is; anything else from a backend is logged with its cause and
    /// answered with a stable `unavailable`: a backend's error text (hosts, ports, SQL) is
    /// for the operator, not for clients.
    private func wrap(_ error: any Error) -> ParleyError {
        if let error = error as? ParleyError { return error }
        logger.error("backend call failed", metadata: ["error": "\(String(reflecting: error))"])
        return .unavailable("storage is unavailable; retry later")
    }

    // MARK: Shutdown

    /// Refuses new sessions and asks every open one to close with "going away", then waits
    /// (up to `timeout`) for the transports to finish closing them.
    public func drain(timeout: Duration = .seconds(5)) async {
        draining.store(true, ordering: .relaxed)
        for watcher in drainWatchers.withLock({ Array($0.values) }) { watcher.poke() }
        let open = sessions.withLock { Array($0.values) }
        if !open.isEmpty { logger.info("closing \(open.count) sessions") }
        for session in open { session.outbox.close(.goingAway) }
        let deadline = ContinuousClock.now + timeout
        while sessionCount > 0, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
        hub.stop()
    }
}

struct PresenceChanges {
    var since: ContinuousClock.Instant
    var joined: Set<String> = []
    var left: Set<String> = []
}

struct TypingKey: Hashable {
    var room: String
    var user: String
}

/// Runs the engine's timers and, on graceful shutdown, drains its sessions. Put it after the
/// transports in the service group so that it is shut down before them.
public struct EngineService: Service {
    let engine: Engine

    public init(engine: Engine) {
        self.engine = engine
    }

    public func run() async throws {
        try? await cancelWhenGracefulShutdown {
            // The tick is how late a coalesced typing or read state can go out after its
            // 500 ms window: 100 ms keeps a `typing: false` within 600 ms.
            var ticks = 0
            while !Task.isCancelled {
                try await Task.sleep(for: .milliseconds(100))
                await engine.tick()
                ticks += 1
                if ticks % 600 == 0 {
                    engine.forgetIdleRates()
                    await engine.deleteOrphanAttachments()
                }
            }
        }
        await engine.drain()
    }
}

extension Engine {
    /// Whether the message store answers (for readiness checks).
    public func storeIsReachable() async -> Bool {
        (try? await store.lastSeq(room: "parley.readiness")) != nil
    }
}
