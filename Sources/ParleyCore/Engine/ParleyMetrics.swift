import CoreMetrics

/// Every metric Parley emits, through swift-metrics with an injected factory (so that each
/// server, and each test, has its own registry). Names and meanings: docs/operations.md.
public final class ParleyMetrics: Sendable {
    public static let deliveryLatencyLabel = "parley_delivery_latency_seconds"
    public static let appendLatencyLabel = "parley_store_append_seconds"
    public static let batchSizeLabel = "parley_store_batch_size"

    /// Each metric's `# HELP` text (their meanings: docs/operations.md, "Metrics").
    public static let help: [String: String] = [
        "parley_messages_published_total": "Messages stored (acked) through this instance.",
        "parley_messages_duplicate_total": "Idempotent retries answered with the original message.",
        "parley_messages_delivered_total": "Live messages queued to members' sockets.",
        "parley_broker_published_total": "Events handed to the broker.",
        "parley_broker_received_total": "Events received from the broker.",
        "parley_slow_consumers_total": "Connections cut off because their backlog passed its bound.",
        "parley_rate_limited_total": "Publishes refused with rate_limited.",
        "parley_calls_started_total": "Calls started on this instance.",
        "parley_calls_missed_total": "Calls that rang out unanswered.",
        "parley_socketio_forwarded_total": "Socket.IO polling requests forwarded to the instance holding their session.",
        "parley_rooms": "Rooms with at least one member on this instance.",
        "parley_members": "Room memberships of this instance's sessions.",
        appendLatencyLabel: "Store append, commit included, in seconds.",
        deliveryLatencyLabel: "Seconds from a message's publication to its write on a member's socket.",
        batchSizeLabel: "Appends per store commit (group commit).",
        "parley_connections": "Open sessions by transport.",
        "parley_errors_total": "Errors answered to clients, by protocol code.",
        "parley_pushes_total": "Web Push outcomes: sent, retried, gone, failed, not_needed, dropped.",
        "parley_webhooks_total": "Webhook attempts: delivered, retried, dead (retries spent); rejected and failed publish hook calls.",
        "parley_webhook_seconds": "Seconds a backend took to answer a webhook or the publish hook.",
        "parley_build_info": "Always 1; the labels say what runs.",
    ]

    public let factory: any MetricsFactory
    let published: Counter
    let duplicates: Counter
    let delivered: Counter
    let brokerPublished: Counter
    let brokerReceived: Counter
    let slowConsumers: Counter
    let rateLimited: Counter
    let callsStarted: Counter
    let callsMissed: Counter
    /// Socket.IO polling requests forwarded to the instance that holds their session.
    public let socketIOForwarded: Counter
    let rooms: Meter
    let members: Meter
    let appendLatency: Timer
    public let deliveryLatency: Timer
    private let connections: [String: Meter]
    private let errors: [String: Counter]
    private let pushes: [String: Counter]
    private let webhooks: [String: Counter]
    let webhookLatency: Timer

    public static let transports = ["websocket", "sse", "grpc", "socketio"]
    /// What became of a push (`parley_pushes_total{result}`): accepted by the push service,
    /// retried (429, 5xx, no answer), the subscription gone (404, 410: deleted), failed (given
    /// up, or refused), not needed (a visible session, or muted), dropped (queue full).
    public static let pushResults = ["sent", "retried", "gone", "failed", "not_needed", "dropped"]
    /// What became of a webhook attempt (`parley_webhooks_total{result}`): delivered (2xx),
    /// retried, dead (its retries spent); and of a publish hook call: allowed, rejected,
    /// hook_failed (no usable answer; the message then went through or not as configured).
    public static let webhookResults = ["delivered", "retried", "dead", "allowed", "rejected", "hook_failed"]
    static let errorCodes: [ParleyError.Code] = [.badRequest, .unauthorized, .forbidden, .notFound, .tooLarge, .rateLimited, .unavailable, .internal]

    public init(factory: any MetricsFactory = MetricsSystem.factory, version: String = "dev") {
        self.factory = factory
        published = Counter(label: "parley_messages_published_total", factory: factory)
        duplicates = Counter(label: "parley_messages_duplicate_total", factory: factory)
        delivered = Counter(label: "parley_messages_delivered_total", factory: factory)
        brokerPublished = Counter(label: "parley_broker_published_total", factory: factory)
        brokerReceived = Counter(label: "parley_broker_received_total", factory: factory)
        slowConsumers = Counter(label: "parley_slow_consumers_total", factory: factory)
        rateLimited = Counter(label: "parley_rate_limited_total", factory: factory)
        callsStarted = Counter(label: "parley_calls_started_total", factory: factory)
        callsMissed = Counter(label: "parley_calls_missed_total", factory: factory)
        socketIOForwarded = Counter(label: "parley_socketio_forwarded_total", factory: factory)
        rooms = Meter(label: "parley_rooms", factory: factory)
        members = Meter(label: "parley_members", factory: factory)
        appendLatency = Timer(label: Self.appendLatencyLabel, factory: factory)
        deliveryLatency = Timer(label: Self.deliveryLatencyLabel, factory: factory)
        connections = Dictionary(uniqueKeysWithValues: Self.transports.map {
            ($0, Meter(label: "parley_connections", dimensions: [("transport", $0)], factory: factory))
        })
        errors = Dictionary(uniqueKeysWithValues: Self.errorCodes.map {
            ($0.name, Counter(label: "parley_errors_total", dimensions: [("code", $0.name)], factory: factory))
        })
        pushes = Dictionary(uniqueKeysWithValues: Self.pushResults.map {
            ($0, Counter(label: "parley_pushes_total", dimensions: [("result", $0)], factory: factory))
        })
        webhooks = Dictionary(uniqueKeysWithValues: Self.webhookResults.map {
            ($0, Counter(label: "parley_webhooks_total", dimensions: [("result", $0)], factory: factory))
        })
        webhookLatency = Timer(label: "parley_webhook_seconds", factory: factory)
        Meter(label: "parley_build_info", dimensions: [("version", version)], factory: factory).set(1)
        for meter in connections.values { meter.set(0) }
        rooms.set(0)
        members.set(0)
    }

    func connection(_ transport: String) -> Meter? { connections[transport] }

    /// Counts an error answered to a client, by its code.
    public func error(_ code: ParleyError.Code) {
        errors[code.name]?.increment()
    }

    func push(_ result: String) {
        pushes[result]?.increment()
    }

    public func webhook(_ result: String) {
        webhooks[result]?.increment()
    }

    public func webhookAnswered(after duration: Duration) {
        webhookLatency.recordNanoseconds(duration.nanoseconds)
    }

    /// Counts a connection cut off because its outbox overflowed.
    public func slowConsumer() {
        slowConsumers.increment()
    }
}

extension ParleyMetrics {
    /// Records, for the live messages among frames just written to a socket, the time from
    /// their publication (taken right before the store commit) to the write.
    public func recordDeliveries(_ frames: [Outbox.Frame]) {
        var now: Timestamp?
        for frame in frames {
            guard let publishedAt = frame.publishedAt else { continue }
            if now == nil { now = .now }
            deliveryLatency.recordMilliseconds(max(0, now!.milliseconds - publishedAt.milliseconds))
        }
    }
}
