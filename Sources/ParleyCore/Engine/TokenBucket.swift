/// A token bucket: `rate` tokens per second, holding at most `burst`. A rate of 0 never limits.
public struct TokenBucket: Sendable {
    public let rate: Double
    public let burst: Double
    private var tokens: Double
    private var updatedAt: ContinuousClock.Instant

    public init(rate: Double, burst: Double, now: ContinuousClock.Instant = .now) {
        self.rate = rate
        self.burst = max(burst, 1)
        self.tokens = max(burst, 1)
        self.updatedAt = now
    }

    /// Takes `cost` tokens (one by default). Returns nil when allowed, or how many
    /// milliseconds until they are there.
    public mutating func take(_ cost: Double = 1, now: ContinuousClock.Instant = .now) -> Int? {
        guard rate > 0 else { return nil }
        let cost = min(cost, burst)
        let elapsed = updatedAt.duration(to: now)
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        tokens = min(burst, tokens + seconds * rate)
        updatedAt = now
        if tokens >= cost {
            tokens -= cost
            return nil
        }
        return max(1, Int(((cost - tokens) / rate * 1000).rounded(.up)))
    }

    /// Whether the bucket will be full once `idle` has passed since its last use.
    public func isFull(after idle: Duration, now: ContinuousClock.Instant = .now) -> Bool {
        updatedAt.duration(to: now) >= idle
    }
}
