import Crypto
import Logging
import ServiceLifecycle
import Synchronization

/// An HTTP POST to a backend, and its answer.
public struct WebhookRequest: Sendable {
    public var url: String
    public var headers: [(String, String)]
    public var body: [UInt8]
    public var timeout: Duration

    public init(url: String, headers: [(String, String)], body: [UInt8], timeout: Duration) {
        self.url = url
        self.headers = headers
        self.body = body
        self.timeout = timeout
    }
}

public struct WebhookResponse: Sendable {
    public var status: Int
    /// The answer's body, read up to a small bound (the publish hook's verdict).
    public var body: [UInt8]

    public init(status: Int, body: [UInt8] = []) {
        self.status = status
        self.body = body
    }
}

/// Sends webhook requests (AsyncHTTPClient in the server; a script in tests). Throws when
/// there was no answer (refused, reset, timed out).
public protocol WebhookTransport: Sendable {
    func send(_ request: WebhookRequest) async throws -> WebhookResponse
}

/// The signature of a webhook body: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
/// A backend recomputes it and refuses a timestamp outside its replay window (5 minutes in
/// the documented examples), so a captured request cannot be replayed later.
public enum WebhookSignature {
    public static let header = "Parley-Signature"

    public static func sign(_ body: [UInt8], secret: [UInt8], at time: Timestamp) -> String {
        let seconds = time.milliseconds / 1000
        var signed = Array("\(seconds).".utf8)
        signed.append(contentsOf: body)
        let mac = HMAC<SHA256>.authenticationCode(for: signed, using: SymmetricKey(data: secret))
        return "t=\(seconds),v1=\(UploadReader.hex(mac))"
    }

    /// The check a backend makes (the documentation's examples do the same).
    public static func verify(_ header: String, body: [UInt8], secret: [UInt8], now: Timestamp, tolerance: Duration = .seconds(300)) -> Bool {
        var seconds: Int64?
        var signatures: [String] = []
        for part in header.split(separator: ",") {
            let pair = part.split(separator: "=", maxSplits: 1).map { String($0).filter { $0 != " " } }
            guard pair.count == 2 else { continue }
            if pair[0] == "t" { seconds = Int64(pair[1]) } else if pair[0] == "v1" { signatures.append(pair[1]) }
        }
        guard let seconds, abs(now.milliseconds / 1000 - seconds) <= tolerance.milliseconds / 1000 else { return false }
        let expected = sign(body, secret: secret, at: Timestamp(milliseconds: seconds * 1000))
        guard let mine = expected.split(separator: "=").last.map(String.init) else { return false }
        return signatures.contains { constantTimeEqual(Array($0.utf8), Array(mine.utf8)) }
    }

    private static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for (x, y) in zip(a, b) { difference |= x ^ y }
        return difference == 0
    }
}

/// Sends the outbox's events to the backends' URLs: each event at least once, a room's events
/// to an endpoint in order, every event of a cluster by one instance at a time (the outbox's
/// leases), retried with exponential backoff and jitter until `maxAttempts`, then kept as a
/// dead letter. Runs on every instance; the outbox decides who sends what.
public final class WebhookDispatcher: Service, Sendable {
    public struct Configuration: Sendable {
        public var urls: [String]
        public var secret: [UInt8]
        public var kinds: Set<WebhookKind> = Set(WebhookKind.allCases)
        /// Attempts in all before an event becomes a dead letter.
        public var maxAttempts = 12
        /// The first retry's delay; each next one doubles, up to `maxDelay`, each drawn
        /// between half and all of that (jitter).
        public var baseDelay: Duration = .seconds(1)
        public var maxDelay: Duration = .seconds(600)
        /// How long a backend may take to answer.
        public var timeout: Duration = .seconds(10)
        /// How long a claimed event is this instance's: well above `timeout`, so that another
        /// instance sends it again only when this one died.
        public var lease: Duration = .seconds(60)
        /// How often the outbox is looked at when nothing pokes this instance (events that
        /// other instances stored, retries coming due).
        public var pollInterval: Duration = .seconds(1)
        /// Rooms (per endpoint) sent to at once.
        public var batch = 32
        /// A room's events claimed together and sent one after another, each after the one
        /// before it was delivered (fewer store round trips than one claim per event).
        public var perRoom = 16

        public init(urls: [String], secret: [UInt8]) {
            self.urls = urls
            self.secret = secret
        }

        public var selection: WebhookSelection { WebhookSelection(targets: urls.count, kinds: kinds) }
    }

    /// The body of an event: its JSON, with the stored row it is about (nil for join, leave,
    /// read, and for a row that is no longer there).
    public typealias Encoder = @Sendable (WebhookEvent, Message?) -> [UInt8]

    private let outbox: any WebhookOutbox
    private let store: any MessageStore
    private let transport: any WebhookTransport
    private let encode: Encoder
    public let configuration: Configuration
    private let clock: any ParleyClock
    private let metrics: ParleyMetrics
    private let logger: Logger
    private let wakeup = Wakeup()
    /// The earliest retry this instance scheduled and has not looked for yet.
    private let nextRetry = Mutex<Timestamp?>(nil)

    public init(
        outbox: any WebhookOutbox, store: any MessageStore, transport: any WebhookTransport, encoder: @escaping Encoder,
        configuration: Configuration, clock: any ParleyClock = SystemClock(), metrics: ParleyMetrics = ParleyMetrics(),
        logger: Logger = Logger(label: "parley.webhooks")
    ) {
        self.outbox = outbox
        self.store = store
        self.transport = transport
        self.encode = encoder
        self.configuration = configuration
        self.clock = clock
        self.metrics = metrics
        self.logger = logger
        outbox.selectWebhooks(configuration.selection)
    }

    /// Something entered the outbox on this instance: look now, not at the next poll.
    public func poke() {
        wakeup.poke()
    }

    public func run() async throws {
        let wakeup = self.wakeup
        let active = ActiveRooms()
        await cancelWhenGracefulShutdown {
            // Each claimed room is sent to in a task of its own; a room that finishes makes room
            // for the next claim at once, so a slow backend room holds back only itself.
            await withDiscardingTaskGroup { group in
                while !Task.isCancelled {
                    let free = self.configuration.batch - active.count.load(ordering: .relaxed)
                    if free > 0 {
                        for queue in await self.claimQueues(limit: free) {
                            active.count.add(1, ordering: .relaxed)
                            group.addTask {
                                await self.send(queue)
                                active.count.subtract(1, ordering: .relaxed)
                                wakeup.poke()
                            }
                        }
                    }
                    // Until a room finishes, an event is stored here, this instance's next retry
                    // comes due, or the poll (events stored by other instances).
                    let now = self.clock.now
                    var delay = self.configuration.pollInterval
                    if let retry = self.nextRetry.withLock({ $0.take() }) {
                        delay = min(delay, .milliseconds(max(retry.milliseconds - now.milliseconds, 0)))
                    }
                    let tick = self.clock.schedule(in: delay) { wakeup.poke() }
                    await wakeup.wait(upTo: nil)
                    tick.cancel()
                }
            }
        }
    }

    /// Claims the rooms that are due and sends to all of them, at once, until each is done;
    /// returns how many events it claimed.
    @discardableResult
    public func sendDue() async -> Int {
        let queues = await claimQueues(limit: configuration.batch)
        await withTaskGroup(of: Void.self) { group in
            for queue in queues {
                group.addTask { await self.send(queue) }
            }
        }
        return queues.reduce(0) { $0 + $1.events.count }
    }

    private final class ActiveRooms: Sendable {
        let count = Atomic<Int>(0)
    }

    /// A room's claimed events for one endpoint, in order, and when their lease ends.
    struct Queue: Sendable {
        var events: [WebhookEvent]
        var leaseUntil: Timestamp
    }

    private func claimQueues(limit: Int) async -> [Queue] {
        let now = clock.now
        let leaseUntil = now.adding(milliseconds: configuration.lease.milliseconds)
        let claimed: [WebhookEvent]
        do {
            claimed = try await outbox.claimWebhooks(now: now, leaseUntil: leaseUntil, limit: limit, perQueue: configuration.perRoom)
        } catch {
            logger.warning("could not read the webhook outbox", metadata: ["error": "\(error)"])
            return []
        }
        var queues: [QueueKey: [WebhookEvent]] = [:]
        for event in claimed { queues[QueueKey(target: event.target, room: event.room), default: []].append(event) }
        return queues.values.map { Queue(events: $0, leaseUntil: leaseUntil) }
    }

    /// In order. After a failure the rest wait (released) behind the retry; and none is begun
    /// that could outlast the lease (another instance may then claim the room's queue).
    private func send(_ queue: Queue) async {
        let lastStart = queue.leaseUntil.adding(milliseconds: -configuration.timeout.milliseconds)
        for (index, event) in queue.events.enumerated() {
            guard clock.now < lastStart else {
                try? await outbox.releaseWebhooks(ids: queue.events[index...].map(\.id))
                return
            }
            if await send(event) { continue }
            try? await outbox.releaseWebhooks(ids: queue.events[(index + 1)...].map(\.id))
            return
        }
    }

    private struct QueueKey: Hashable {
        var target: Int
        var room: String
    }

    /// Sends one event; true when it is done with (delivered, or given up as a dead letter).
    @discardableResult
    private func send(_ event: WebhookEvent) async -> Bool {
        guard event.target < configuration.urls.count else {
            // An endpoint taken out of the configuration: its events stay, as dead letters.
            try? await outbox.deadLetterWebhook(id: event.id, error: "no webhook URL \(event.target + 1) is configured")
            return true
        }
        var message: Message?
        if event.kind.isStored, let seq = event.seq {
            do {
                let page = try await store.history(room: event.room, query: HistoryQuery(after: seq - 1, limit: 1))
                message = page.messages.first { $0.seq == seq }
            } catch {
                return await failed(event, "could not read the event's row: \(error)")
            }
        }
        let body = encode(event, message)
        let request = WebhookRequest(
            url: configuration.urls[event.target],
            headers: [
                ("Content-Type", "application/json"),
                ("User-Agent", "Parley-Webhooks"),
                ("Parley-Event-Id", String(event.id)),
                ("Parley-Event-Type", event.kind.rawValue),
                ("Parley-Attempt", String(event.attempts + 1)),
                (WebhookSignature.header, WebhookSignature.sign(body, secret: configuration.secret, at: clock.now)),
            ],
            body: body, timeout: configuration.timeout
        )
        let started = clock.instant
        do {
            let response = try await transport.send(request)
            metrics.webhookAnswered(after: clock.instant - started)
            if (200..<300).contains(response.status) {
                metrics.webhook("delivered")
                do {
                    try await outbox.completeWebhook(id: event.id)
                    return true
                } catch {
                    // Sent again when the lease runs out; the ones behind it wait.
                    return false
                }
            } else {
                return await failed(event, "HTTP \(response.status)")
            }
        } catch {
            return await failed(event, "no answer: \(error)")
        }
    }

    /// Records a failed attempt; true when the event became a dead letter (its room goes on).
    private func failed(_ event: WebhookEvent, _ why: String) async -> Bool {
        let attempts = event.attempts + 1
        do {
            if attempts >= configuration.maxAttempts {
                metrics.webhook("dead")
                logger.warning(
                    "webhook retries spent; kept as a dead letter",
                    metadata: ["event": "\(event.id)", "room": "\(event.room)", "error": "\(why)"]
                )
                try await outbox.deadLetterWebhook(id: event.id, error: why)
                return true
            } else {
                metrics.webhook("retried")
                logger.debug("webhook attempt failed", metadata: ["event": "\(event.id)", "attempt": "\(attempts)", "error": "\(why)"])
                let delay = Self.backoff(attempt: attempts, base: configuration.baseDelay, cap: configuration.maxDelay)
                let due = clock.now.adding(milliseconds: delay.milliseconds)
                try await outbox.retryWebhook(id: event.id, at: due, error: why)
                nextRetry.withLock { next in next = min(next ?? due, due) }
            }
        } catch {
            // The lease runs out and the event is tried again.
            logger.warning("could not record a webhook attempt", metadata: ["event": "\(event.id)", "error": "\(error)"])
        }
        return false
    }

    /// The delay before attempt `attempt + 1`: `base * 2^(attempt-1)`, at most `cap`, drawn
    /// between half and all of it, so that events that failed together do not all come back
    /// together.
    public static func backoff(attempt: Int, base: Duration, cap: Duration, random: Double = Double.random(in: 0...1)) -> Duration {
        let exponent = min(max(attempt - 1, 0), 30)
        let full = min(base.milliseconds * (Int64(1) << exponent), cap.milliseconds)
        return .milliseconds(full / 2 + Int64(Double(full / 2) * random))
    }
}
