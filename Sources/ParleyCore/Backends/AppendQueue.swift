import Synchronization

/// The queue in front of a store's single writer, for group commit: `append` callers wait
/// here while the writer takes everything queued (up to `maxBatch`) and commits it in one
/// transaction. Used by the SQLite and PostgreSQL stores.
public final class AppendQueue: Sendable {
    /// An append waiting for its commit: resume `continuation` with its result.
    public typealias Pending = (draft: MessageDraft, continuation: CheckedContinuation<AppendResult, any Error>)

    private struct State {
        var queue: [Pending] = []
        var waiter: CheckedContinuation<Void, Never>?
        var stopping = false
    }

    private let state = Mutex(State())
    public let maxBatch: Int

    public init(maxBatch: Int) {
        self.maxBatch = maxBatch
    }

    /// Queues an append and waits for the writer to commit it; `unavailable` once stopping.
    public func append(_ draft: MessageDraft) async throws -> AppendResult {
        try await withCheckedThrowingContinuation { continuation in
            let (accepted, waiter) = state.withLock { state -> (Bool, CheckedContinuation<Void, Never>?) in
                guard !state.stopping else { return (false, nil) }
                state.queue.append((draft, continuation))
                return (true, state.waiter.take())
            }
            if accepted {
                waiter?.resume()
            } else {
                continuation.resume(throwing: ParleyError.unavailable("the store is shutting down"))
            }
        }
    }

    /// The writer's next batch, in arrival order; nil once stopped and drained.
    public func nextBatch() async -> [Pending]? {
        while true {
            let batch = state.withLock { state -> [Pending]? in
                if state.queue.isEmpty { return state.stopping ? [] : nil }
                let count = min(state.queue.count, maxBatch)
                defer { state.queue.removeFirst(count) }
                return Array(state.queue.prefix(count))
            }
            if let batch { return batch.isEmpty ? nil : batch }
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = state.withLock { state -> Bool in
                    if !state.queue.isEmpty || state.stopping { return true }
                    state.waiter = continuation
                    return false
                }
                if ready { continuation.resume() }
            }
        }
    }

    /// Refuses new appends; the writer drains what is queued, then `nextBatch` returns nil.
    public func stop() {
        state.withLock { state in
            state.stopping = true
            return state.waiter.take()
        }?.resume()
    }
}
