import NIOCore
import Synchronization

/// Why a session's connection is being closed by the server.
public enum CloseReason: Sendable, Hashable {
    /// The unsent backlog passed its bound (WebSocket 1013; the client may resume).
    case slowConsumer
    /// The server is shutting down (WebSocket 1001).
    case goingAway
    /// The client broke a rule (WebSocket 1008).
    case policyViolation(String)
    /// The server failed to serve the session (WebSocket 1011).
    case serverError(String)
}

/// A session's bounded queue of encoded frames, filled by the hub without ever blocking and
/// drained by the transport's single writer task.
///
/// When the queued bytes pass `maxBytes` the outbox drops its backlog and closes with
/// `.slowConsumer`: a slow reader only ever costs its own bound, never the room's speed.
public final class Outbox: Sendable {
    /// An encoded frame and, for a live message, when it was published (for the delivery
    /// latency metric).
    public struct Frame: Sendable {
        public var bytes: ByteBuffer
        public var publishedAt: Timestamp?
    }

    public enum Next: Sendable {
        case frames([Frame])
        case closed(CloseReason)
    }

    private struct State {
        var queue: [Frame] = []
        var bytes = 0
        var closing: CloseReason?
        var waiter: CheckedContinuation<Void, Never>?
        /// Producers that pace themselves (history replays) waiting for the queue to drain.
        var spaceWaiters: [CheckedContinuation<Void, Never>] = []
        /// Transports waiting for the close decision (`closed()`).
        var closeWaiters: [CheckedContinuation<CloseReason, Never>] = []

        /// Records the close reason and hands back everyone to wake.
        mutating func beginClosing(_ reason: CloseReason) -> Wakeups {
            closing = reason
            defer {
                spaceWaiters.removeAll()
                closeWaiters.removeAll()
            }
            return Wakeups(reason: reason, writer: waiter.take(), space: spaceWaiters, close: closeWaiters)
        }
    }

    private struct Wakeups {
        var reason: CloseReason?
        var writer: CheckedContinuation<Void, Never>?
        var space: [CheckedContinuation<Void, Never>] = []
        var close: [CheckedContinuation<CloseReason, Never>] = []

        func resume() {
            writer?.resume()
            for waiter in space { waiter.resume() }
            if let reason { for waiter in close { waiter.resume(returning: reason) } }
        }
    }

    private let state = Mutex(State())
    public let maxBytes: Int

    public init(maxBytes: Int) {
        self.maxBytes = maxBytes
    }

    /// Queues a frame; returns false when the outbox is closed or just overflowed.
    @discardableResult
    public func enqueue(_ frame: ByteBuffer, publishedAt: Timestamp? = nil) -> Bool {
        let (accepted, wakeups) = state.withLock { state -> (Bool, Wakeups?) in
            guard state.closing == nil else { return (false, nil) }
            state.bytes += frame.readableBytes
            if state.bytes > maxBytes {
                state.queue.removeAll()
                state.bytes = 0
                return (false, state.beginClosing(.slowConsumer))
            }
            state.queue.append(Frame(bytes: frame, publishedAt: publishedAt))
            return (true, state.waiter.take().map { Wakeups(writer: $0) })
        }
        wakeups?.resume()
        return accepted
    }

    /// Asks the writer to close the connection. `.goingAway` lets the queued frames go first;
    /// every other reason drops them.
    public func close(_ reason: CloseReason) {
        let wakeups = state.withLock { state -> Wakeups? in
            guard state.closing == nil else { return nil }
            if reason != .goingAway {
                state.queue.removeAll()
                state.bytes = 0
            }
            return state.beginClosing(reason)
        }
        wakeups?.resume()
    }

    /// Waits until the outbox is told to close and returns why. A transport whose writes can
    /// block (a stream under flow control) watches this to end the connection at once
    /// instead of waiting for a write that may never complete.
    public func closed() async -> CloseReason {
        await withCheckedContinuation { (continuation: CheckedContinuation<CloseReason, Never>) in
            let reason = state.withLock { state -> CloseReason? in
                if let closing = state.closing { return closing }
                state.closeWaiters.append(continuation)
                return nil
            }
            if let reason { continuation.resume(returning: reason) }
        }
    }

    /// Waits until at most half the bound is queued (or the outbox closes). Producers that can
    /// wait, such as a history replay, call it so that they fill the socket as fast as it
    /// drains instead of overflowing the outbox. Returns false once the outbox is closing.
    public func waitForSpace() async -> Bool {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = state.withLock { state -> Bool in
                if state.closing != nil || state.bytes <= maxBytes / 2 { return true }
                state.spaceWaiters.append(continuation)
                return false
            }
            if ready { continuation.resume() }
        }
        return !isClosing
    }

    public var isClosing: Bool { state.withLock { $0.closing != nil } }

    /// Waits for the next batch: everything queued so far, in order, or the close reason once
    /// the queue is empty. Returns `.closed(.goingAway)` when the calling task is cancelled.
    public func next() async -> Next {
        while true {
            if let next = takeBatch() { return next }
            if Task.isCancelled { return .closed(.goingAway) }
            await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let ready = state.withLock { state -> Bool in
                        if !state.queue.isEmpty || state.closing != nil { return true }
                        state.waiter = continuation
                        return false
                    }
                    if ready { continuation.resume() }
                }
            } onCancel: {
                state.withLock { $0.waiter.take() }?.resume()
            }
        }
    }

    private func takeBatch() -> Next? {
        var spaceWaiters: [CheckedContinuation<Void, Never>] = []
        defer { for waiter in spaceWaiters { waiter.resume() } }
        return state.withLock { state in
            if !state.queue.isEmpty {
                let batch = state.queue
                state.queue.removeAll(keepingCapacity: true)
                state.bytes = 0
                spaceWaiters = state.spaceWaiters
                state.spaceWaiters.removeAll()
                return .frames(batch)
            }
            return state.closing.map { .closed($0) }
        }
    }
}
