import Synchronization

/// Wakes one waiting task early. A poke while nobody waits is kept for the next wait, so a
/// change made just before the wait starts is never missed.
public final class Wakeup: Sendable {
    private struct State {
        var pending = false
        var waiter: CheckedContinuation<Void, Never>?
    }

    private let state = Mutex(State())

    public init() {}

    public func poke() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if let waiter = state.waiter.take() { return waiter }
            state.pending = true
            return nil
        }
        waiter?.resume()
    }

    /// Returns at the next poke, after `timeout` (nil: no timeout), or when cancelled.
    public func wait(upTo timeout: Duration?) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.wait() }
            if let timeout { group.addTask { try? await Task.sleep(for: timeout) } }
            await group.next()
            group.cancelAll()
        }
    }

    private func wait() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = state.withLock { state -> Bool in
                    if state.pending || Task.isCancelled {
                        state.pending = false
                        return true
                    }
                    state.waiter = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            poke()
        }
    }
}

/// A connection's token expiry, for every transport that keeps a session open: at the
/// identity's `expiresAt` the client is warned once (`unauthorized`), and if no fresh token
/// for the same user arrives within `grace`, the connection is to be closed. A refresh (or a
/// session opening) must `poke` it so that it looks at the new expiry.
public struct TokenExpiry: Sendable {
    public let grace: Duration
    private let changed = Wakeup()

    public init(grace: Duration) {
        self.grace = grace
    }

    /// The identity changed (session opened or refreshed).
    public func poke() { changed.poke() }

    /// Returns once the current identity of `session` (nil until it opens) expired more than
    /// `grace` ago; the caller then closes the connection. `warn` runs once per expiry, when it
    /// passes. Returns early only when the task is cancelled.
    public func watch(_ session: @Sendable () -> Session?, warn: (ParleyError) -> Void) async {
        var warned: Timestamp?
        while !Task.isCancelled {
            var wait: Duration?
            if let expiresAt = session()?.identity.expiresAt {
                let now = Timestamp.now
                let closesAt = expiresAt.adding(milliseconds: grace.milliseconds)
                if now < expiresAt {
                    wait = .milliseconds(expiresAt.milliseconds - now.milliseconds)
                } else if now < closesAt {
                    if warned != expiresAt {
                        warned = expiresAt
                        warn(ParleyError(.unauthorized, "token expired; send connect with a fresh token within \(grace)"))
                    }
                    wait = .milliseconds(closesAt.milliseconds - now.milliseconds)
                } else {
                    return
                }
            }
            await changed.wait(upTo: wait)
        }
    }
}
