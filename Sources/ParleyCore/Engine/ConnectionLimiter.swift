import Synchronization

/// Counts open long-lived connections (WebSocket, SSE, gRPC streams) in total and per
/// client address, and refuses one more past either bound. Existing connections are never
/// affected: a refused client is told before it holds anything.
public final class ConnectionLimiter: Sendable {
    /// A counted connection; `release` (idempotent) gives its place back, as does dropping it.
    public final class Ticket: Sendable {
        private let limiter: ConnectionLimiter
        private let address: String?
        private let released = Atomic<Bool>(false)

        fileprivate init(limiter: ConnectionLimiter, address: String?) {
            self.limiter = limiter
            self.address = address
        }

        public func release() {
            guard !released.exchange(true, ordering: .relaxed) else { return }
            limiter.release(address)
        }

        /// A ticket dropped unreleased gives its place back: a call that ends before its
        /// transport runs any of its code (a gRPC stream reset before its metadata is written,
        /// an SSE request reset before its head) cannot leak a slot.
        deinit {
            release()
        }
    }

    private struct State {
        var total = 0
        var perAddress: [String: Int] = [:]
    }

    private let state = Mutex(State())
    /// 0 means no limit.
    public let maxTotal: Int
    /// 0 means no limit.
    public let maxPerAddress: Int

    public init(maxTotal: Int, maxPerAddress: Int) {
        self.maxTotal = maxTotal
        self.maxPerAddress = maxPerAddress
    }

    /// Counts a new connection from `address` (nil when unknown: counted in the total only).
    /// Fails with `unavailable` when the server is full and `rate_limited` when that address
    /// holds its maximum.
    public func acquire(address: String?) throws(ParleyError) -> Ticket {
        try state.withLock { state throws(ParleyError) in
            if maxTotal > 0, state.total >= maxTotal {
                throw ParleyError(.unavailable, "the server holds its maximum of \(maxTotal) connections; retry later")
            }
            if let address, maxPerAddress > 0, state.perAddress[address, default: 0] >= maxPerAddress {
                throw ParleyError(
                    .rateLimited, "too many connections from \(address) (at most \(maxPerAddress))", retryAfterMs: 1000)
            }
            state.total += 1
            if let address { state.perAddress[address, default: 0] += 1 }
        }
        return Ticket(limiter: self, address: address)
    }

    /// Throws what `acquire` would throw now, without counting anything.
    public func check(address: String?) throws(ParleyError) {
        _ = try acquire(address: address)
    }

    public var count: Int { state.withLock { $0.total } }

    fileprivate func release(_ address: String?) {
        state.withLock { state in
            state.total -= 1
            guard let address, let count = state.perAddress[address] else { return }
            state.perAddress[address] = count > 1 ? count - 1 : nil
        }
    }
}
