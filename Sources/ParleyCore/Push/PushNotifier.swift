import Logging
import ServiceLifecycle
import Synchronization

/// What a push tells a user: the JSON the web client's service worker receives (its fields:
/// docs/protocol.md, "Web Push").
public struct PushNotification: Sendable, Hashable {
    public enum Kind: String, Sendable, Hashable {
        /// A direct message.
        case direct = "dm"
        /// A message that mentions the user.
        case mention
        /// Someone calls the user.
        case call
    }

    public var kind: Kind
    /// To whom.
    public var user: String
    public var room: String
    public var from: String
    /// The message's text (at most `maxBody` characters), or nothing for a call.
    public var body: String
    /// The message's id and seq; the call's id.
    public var message: String?
    public var seq: Int64?
    public var call: String?
    public var video: Bool

    public static let maxBody = 300

    public init(kind: Kind, user: String, room: String, from: String, body: String = "", message: String? = nil, seq: Int64? = nil, call: String? = nil, video: Bool = false) {
        self.kind = kind
        self.user = user
        self.room = room
        self.from = from
        self.body = body.count > Self.maxBody ? String(body.prefix(Self.maxBody - 1)) + "…" : body
        self.message = message
        self.seq = seq
        self.call = call
        self.video = video
    }

    /// How long the push service keeps it for a browser that is offline: a call only while it
    /// rings; a message for a day.
    public var timeToLive: Duration { kind == .call ? .seconds(30) : .seconds(86_400) }
    /// RFC 8030 urgency: a call and a direct message wake a device; a mention may wait.
    public var urgency: String { kind == .mention ? "normal" : "high" }

    public var payload: [UInt8] {
        var json = #"{"type":"# + JSONText.quote(kind.rawValue) + #","room":"# + JSONText.quote(room) + #","from":"# + JSONText.quote(from)
        if !body.isEmpty { json += #","body":"# + JSONText.quote(body) }
        if let message { json += #","id":"# + JSONText.quote(message) }
        if let seq { json += #","seq":"# + String(seq) }
        if let call { json += #","call":"# + JSONText.quote(call) + #","video":"# + (video ? "true" : "false") }
        return Array((json + "}").utf8)
    }
}

/// A push as sent over HTTP (RFC 8030): a POST of `body` to the subscription's endpoint.
public struct PushRequest: Sendable {
    public var endpoint: String
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]
}

public struct PushResponse: Sendable {
    public var status: Int
    /// The push service's `Retry-After`, when it said.
    public var retryAfter: Duration?

    public init(status: Int, retryAfter: Duration? = nil) {
        self.status = status
        self.retryAfter = retryAfter
    }
}

/// Sends pushes; the server's is an HTTP client, tests give their own.
public protocol PushTransport: Sendable {
    /// The push service's answer; throws when there was none (no connection, timeout).
    func send(_ request: PushRequest) async throws -> PushResponse
}

/// Rooms a user muted for push: `everyRoom` mutes them all.
public enum PushSettings {
    public static let everyRoom = "*"
}

/// Sends Web Push to users who have no visible session: a direct message, a mention or a
/// call, to each of the user's subscriptions, encrypted for it (`WebPushEncryption`) and
/// signed with the server's VAPID key.
///
/// `enqueue` never waits: the publish path hands over what to push and goes on; a bounded
/// queue (`Configuration.queueLimit`) drops what does not fit. Whoever runs the publish (or
/// the call) enqueues, so each event is pushed by one instance of a cluster, and which sessions
/// are visible is asked of the shared presence store. A subscription the push service says is
/// gone (404, 410) is deleted; 429, 5xx and no answer are retried with exponential backoff
/// (or the service's `Retry-After`) while the push is still worth sending (its TTL).
public final class PushNotifier: Service {
    public struct Configuration: Sendable {
        /// VAPID `sub`: how a push service can reach whoever runs the server.
        public var contact = "mailto:parley@localhost"
        /// Where subscriptions may point.
        public var services = PushServices.browsers
        public var queueLimit = 10_000
        /// Pushes in flight at once.
        public var concurrency = 16
        public var maxAttempts = 5
        public var firstRetry: Duration = .seconds(1)
        public var maxRetry: Duration = .seconds(60)

        public init() {}
    }

    public let configuration: Configuration
    private let store: any MessageStore
    private let presence: any PresenceStore
    private let transport: any PushTransport
    private let clock: any ParleyClock
    private let metrics: ParleyMetrics
    private let logger: Logger
    private let jobs: AsyncStream<PushNotification>
    private let queue: AsyncStream<PushNotification>.Continuation
    private let key = Mutex<VAPIDKey?>(nil)
    /// VAPID headers by push service origin, reused for an hour.
    private let authorizations = Mutex<[String: (header: String, until: Timestamp)]>([:])
    private let stopping = Atomic<Bool>(false)
    /// Retries waiting for their time, by number: shutdown ends their wait at once.
    private let retryWaits = Mutex<(next: Int, tasks: [Int: Task<Void, Never>])>((0, [:]))

    public init(
        store: any MessageStore, presence: any PresenceStore, transport: any PushTransport, configuration: Configuration = Configuration(),
        clock: any ParleyClock = SystemClock(), metrics: ParleyMetrics = ParleyMetrics(), logger: Logger = Logger(label: "parley.push")
    ) {
        self.store = store
        self.presence = presence
        self.transport = transport
        self.configuration = configuration
        self.clock = clock
        self.metrics = metrics
        self.logger = logger
        (jobs, queue) = AsyncStream.makeStream(of: PushNotification.self, bufferingPolicy: .bufferingOldest(configuration.queueLimit))
    }

    /// The server's VAPID key, made once in the store and the same for every instance.
    public func vapidKey() async throws -> VAPIDKey {
        if let key = key.withLock({ $0 }) { return key }
        let made = VAPIDKey(secret: try await store.sharedSecret(named: "vapid"))
        key.withLock { $0 = made }
        return made
    }

    /// Queues a push; returns at once.
    public func enqueue(_ notification: PushNotification) {
        if case .dropped = queue.yield(notification) { metrics.push("dropped") }
    }

    public func run() async throws {
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                var running = 0
                for await job in jobs {
                    if running >= configuration.concurrency {
                        await group.next()
                        running -= 1
                    }
                    group.addTask { await self.deliver(job) }
                    running += 1
                }
            }
        } onGracefulShutdown: {
            // What is queued still goes out, once, with no more retries.
            self.stopping.store(true, ordering: .relaxed)
            self.queue.finish()
            for task in self.retryWaits.withLock({ Array($0.tasks.values) }) { task.cancel() }
        }
    }

    /// Pushes `notification` to each subscription of its user, unless the user has a visible
    /// session or muted the room.
    func deliver(_ notification: PushNotification) async {
        do {
            if try await presence.hasVisibleSession(user: notification.user) {
                metrics.push("not_needed")
                return
            }
            let muted = try await store.pushMutes(user: notification.user)
            if muted.contains(PushSettings.everyRoom) || muted.contains(notification.room) {
                metrics.push("not_needed")
                return
            }
            let subscriptions = try await store.pushSubscriptions(user: notification.user)
            if subscriptions.isEmpty { return }
            let key = try await vapidKey()
            await withTaskGroup(of: Void.self) { group in
                for subscription in subscriptions {
                    group.addTask { await self.send(notification, to: subscription, key: key) }
                }
            }
        } catch {
            metrics.push("failed")
            logger.warning("push not sent", metadata: ["user": "\(notification.user)", "error": "\(error)"])
        }
    }

    private func send(_ notification: PushNotification, to subscription: PushSubscription, key: VAPIDKey) async {
        let started = clock.instant
        let origin = PushServices.origin(of: subscription.endpoint) ?? subscription.endpoint
        var attempt = 0
        do {
            let body = try WebPushEncryption.encrypt(notification.payload, p256dh: subscription.p256dh, auth: subscription.auth)
            while true {
                attempt += 1
                let request = PushRequest(
                    endpoint: subscription.endpoint,
                    headers: [
                        ("TTL", String(notification.timeToLive.milliseconds / 1000)), ("Urgency", notification.urgency),
                        ("Content-Encoding", "aes128gcm"), ("Content-Type", "application/octet-stream"),
                        ("Authorization", try authorization(subscription.endpoint, key: key)),
                    ],
                    body: body
                )
                let response = try? await transport.send(request)
                switch response?.status {
                case .some(200..<300):
                    metrics.push("sent")
                    return
                case .some(404), .some(410):
                    metrics.push("gone")
                    logger.info("push subscription gone: deleted", metadata: ["user": "\(subscription.user)", "service": "\(origin)"])
                    try await store.removePushSubscription(endpoint: subscription.endpoint, user: subscription.user)
                    return
                case nil, .some(429), .some(500..<600):
                    let wait = response?.retryAfter ?? backoff(attempt: attempt)
                    let worthIt = clock.instant + wait - started < notification.timeToLive
                    guard attempt < configuration.maxAttempts, worthIt, !stopping.load(ordering: .relaxed) else {
                        metrics.push("failed")
                        logger.warning(
                            "push failed", metadata: ["service": "\(origin)", "status": "\(response?.status ?? 0)", "attempts": "\(attempt)"]
                        )
                        return
                    }
                    metrics.push("retried")
                    await pause(wait)
                    if stopping.load(ordering: .relaxed) {
                        metrics.push("failed")
                        return
                    }
                case .some(let status):
                    metrics.push("failed")
                    logger.warning("push refused", metadata: ["service": "\(origin)", "status": "\(status)"])
                    return
                }
            }
        } catch {
            metrics.push("failed")
            logger.warning("push failed", metadata: ["service": "\(origin)", "error": "\(error)"])
        }
    }

    /// Waits `duration` on the clock, or until shutdown.
    private func pause(_ duration: Duration) async {
        let clock = self.clock
        let task = Task { await clock.sleep(for: duration) }
        let id = retryWaits.withLock { waits in
            waits.next += 1
            waits.tasks[waits.next] = task
            return waits.next
        }
        // Registered first, then checked: a shutdown either sees the task or was seen here.
        if stopping.load(ordering: .relaxed) { task.cancel() }
        await task.value
        retryWaits.withLock { _ = $0.tasks.removeValue(forKey: id) }
    }

    /// 1 s, 2 s, 4 s... up to `maxRetry`, each with up to a quarter more at random, so that
    /// pushes held up together do not all come back together.
    func backoff(attempt: Int) -> Duration {
        let base = min(configuration.maxRetry, configuration.firstRetry * (1 << min(attempt - 1, 20)))
        return base + base * Double.random(in: 0..<0.25)
    }

    private func authorization(_ endpoint: String, key: VAPIDKey) throws -> String {
        let origin = PushServices.origin(of: endpoint) ?? endpoint
        let now = clock.now
        if let cached = authorizations.withLock({ $0[origin] }), cached.until > now { return cached.header }
        let header = try key.authorization(endpoint: endpoint, contact: configuration.contact, expiry: now.adding(milliseconds: 12 * 3_600_000))
        authorizations.withLock { $0[origin] = (header, now.adding(milliseconds: 3_600_000)) }
        return header
    }
}

extension ParleyClock {
    /// Returns once `delay` has passed on this clock, or at once when the task is cancelled.
    public func sleep(for delay: Duration) async {
        let waiter = Waiter()
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                guard waiter.wait(continuation) else { return }
                let call = schedule(in: delay) { waiter.resume() }
                waiter.onCancel(call)
            }
        } onCancel: {
            waiter.resume()
        }
    }
}

private final class Waiter: Sendable {
    private struct State {
        var continuation: CheckedContinuation<Void, Never>?
        var done = false
        var call: ScheduledCall?
    }

    private let state = Mutex(State())

    /// False when it is over already (cancelled): the continuation was resumed.
    func wait(_ continuation: CheckedContinuation<Void, Never>) -> Bool {
        let done = state.withLock { state in
            if !state.done { state.continuation = continuation }
            return state.done
        }
        if done { continuation.resume() }
        return !done
    }

    func onCancel(_ call: ScheduledCall) {
        let done = state.withLock { state in
            if !state.done { state.call = call }
            return state.done
        }
        if done { call.cancel() }
    }

    func resume() {
        let (continuation, call) = state.withLock { state -> (CheckedContinuation<Void, Never>?, ScheduledCall?) in
            guard !state.done else { return (nil, nil) }
            state.done = true
            defer { state.continuation = nil; state.call = nil }
            return (state.continuation, state.call)
        }
        call?.cancel()
        continuation?.resume()
    }
}
