/// Exponential backoff with jitter between reconnection attempts.
///
/// Attempt `n` (from 0) waits a random time in `[(1 - jitter) * d, d]`, where
/// `d = min(maximumDelay, initialDelay * multiplier^n)`. The jitter spreads the reconnections
/// of many instances after a shared Redis restart.
public struct RedisBackoff: Sendable, Hashable {
    public var initialDelay: Duration
    public var maximumDelay: Duration
    public var multiplier: Double
    /// Between 0 (no randomness) and 1 (anywhere from 0 to the full delay).
    public var jitter: Double

    public init(
        initialDelay: Duration = .milliseconds(100),
        maximumDelay: Duration = .seconds(10),
        multiplier: Double = 2,
        jitter: Double = 0.5
    ) {
        self.initialDelay = initialDelay
        self.maximumDelay = maximumDelay
        self.multiplier = multiplier
        self.jitter = jitter
    }

    /// The delay before attempt `attempt`, with `random` in `0..<1` choosing within the jitter.
    public func delay(forAttempt attempt: Int, random: Double) -> Duration {
        let maximum = Self.seconds(maximumDelay)
        var seconds = min(Self.seconds(initialDelay), maximum)
        for _ in 0..<max(0, attempt) where seconds < maximum {
            seconds = min(seconds * max(multiplier, 1), maximum)
        }
        let spread = min(max(jitter, 0), 1) * min(max(random, 0), 1)
        return .nanoseconds(Int64(seconds * (1 - spread) * 1e9))
    }

    public func delay(forAttempt attempt: Int) -> Duration {
        delay(forAttempt: attempt, random: Double.random(in: 0..<1))
    }

    private static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) * 1e-18
    }
}
