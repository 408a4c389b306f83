import ParleyCore
import Testing

@Suite("Connection limiter and bearer credentials")
struct ConnectionLimiterTests {
    @Test("refuses past the total with unavailable and past an address's share with rate_limited")
    func limits() throws {
        let limiter = ConnectionLimiter(maxTotal: 3, maxPerAddress: 2)
        var held: [ConnectionLimiter.Ticket] = []
        let a1 = try limiter.acquire(address: "10.0.0.1")
        held.append(try limiter.acquire(address: "10.0.0.1"))
        #expect(throws: ParleyError(.rateLimited, "too many connections from 10.0.0.1 (at most 2)", retryAfterMs: 1000)) {
            try limiter.acquire(address: "10.0.0.1")
        }
        held.append(try limiter.acquire(address: nil))
        #expect(limiter.count == 3)
        do {
            held.append(try limiter.acquire(address: "10.0.0.2"))
            Issue.record("acquired past the total")
        } catch {
            #expect(error.code == .unavailable)
        }
        a1.release()
        a1.release()
        #expect(limiter.count == 2)
        held.append(try limiter.acquire(address: "10.0.0.1"))
        #expect(limiter.count == 3)
    }

    @Test("a ticket dropped without release gives its place back, once")
    func droppedTicket() throws {
        let limiter = ConnectionLimiter(maxTotal: 1, maxPerAddress: 1)
        do {
            let ticket = try limiter.acquire(address: "10.0.0.1")
            #expect(limiter.count == 1)
            _ = ticket
        }
        #expect(limiter.count == 0)
        var released = try limiter.acquire(address: "10.0.0.1")
        released.release()
        released = try limiter.acquire(address: "10.0.0.1")
        #expect(limiter.count == 1)
        _ = released
    }

    @Test("0 means no limit")
    func unlimited() throws {
        let limiter = ConnectionLimiter(maxTotal: 0, maxPerAddress: 0)
        let held = try (0..<1000).map { _ in try limiter.acquire(address: "10.0.0.1") }
        #expect(limiter.count == 1000)
        #expect(held.count == 1000)
    }

    @Test("Bearer credentials: scheme case-insensitive, blanks trimmed, anything else is none")
    func bearer() {
        #expect(BearerToken.parse("Bearer abc") == "abc")
        #expect(BearerToken.parse("bearer  abc ") == "abc")
        #expect(BearerToken.parse("BEARER abc") == "abc")
        #expect(BearerToken.parse("Basic abc") == nil)
        #expect(BearerToken.parse("Bearer") == nil)
        #expect(BearerToken.parse("Bearer   ") == nil)
        #expect(BearerToken.parse("Bearerabc") == nil)
        #expect(BearerToken.parse(nil) == nil)
    }

    @Test("a refreshed identity must be the same user")
    func refresh() throws {
        let identity = Identity(user: "alice", expiresAt: Timestamp(milliseconds: 1))
        #expect(identity.isExpired(at: Timestamp(milliseconds: 1)))
        #expect(!Identity(user: "alice").isExpired())
    }
}
