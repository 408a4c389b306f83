import Testing

@testable import ParleyRedis

@Suite("Reconnect backoff")
struct RedisBackoffTests {
    let backoff = RedisBackoff(initialDelay: .milliseconds(100), maximumDelay: .seconds(2), multiplier: 2, jitter: 0.5)

    @Test func growsExponentiallyUpToTheMaximum() {
        let delays = (0..<8).map { backoff.delay(forAttempt: $0, random: 0) }
        #expect(delays == [100, 200, 400, 800, 1600, 2000, 2000, 2000].map { Duration.milliseconds($0) })
        #expect(backoff.delay(forAttempt: 1_000_000, random: 0) == .seconds(2))
    }

    @Test func jitterShortensWithinItsFraction() {
        #expect(backoff.delay(forAttempt: 2, random: 0.999_999) > .milliseconds(200))
        #expect(backoff.delay(forAttempt: 2, random: 0.5) == .milliseconds(300))
        for _ in 0..<100 {
            let delay = backoff.delay(forAttempt: 3)
            #expect(delay >= .milliseconds(400) && delay <= .milliseconds(800))
        }
    }
}
