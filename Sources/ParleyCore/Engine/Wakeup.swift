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
        guard let timeout else { return await wait() }
        _ = try? await withTimeout(timeout) { await self.wait() }
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
