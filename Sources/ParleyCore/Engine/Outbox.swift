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
    /// The client did not authenticate in time, or its token expired and was not refreshed
    /// (WebSocket 1008, gRPC UNAUTHENTICATED).
    case unauthenticated(String)
    /// The server failed to serve the session (WebSocket 1011).
    case serverError(String)
}

/// A session's bounded queue of encoded frames, filled by the hub without ever blocking and
/// drained by the transport, in one of two ways:
/// - pushed (`onReady`): the first frame queued after a drain calls `onReady`, which schedules
///   one drain on the socket's event loop; the drain takes everything queued by then
///   (`take(into:)`), writes it and flushes once. No task waits per connection, and a burst
///   of deliveries costs one wake-up, not one per frame.
/// - pulled: a writer task awaits `next()` (gRPC and SSE, whose writers are async).
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
        /// `onReady` was called and the drain has not taken the queue yet.
        var signalled = false
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
    private let onReady: (@Sendable () -> Void)?

    /// `onReady`: the push mode's signal, called (outside the lock) when frames or a close
    /// wait and no drain is pending; nil for a pulled outbox.
    public init(maxBytes: Int, onReady: (@Sendable () -> Void)? = nil) {
        self.maxBytes = maxBytes
        self.onReady = onReady
    }

    /// Returns true when `onReady` must be called: push mode and no drain pending.
    private static func signal(_ state: inout State, push: Bool) -> Bool {
        guard push, !state.signalled else { return false }
        state.signalled = true
        return true
    }

    /// Push mode: moves everything queued into `batch` (which must be empty; its capacity is
    /// kept, so a steady stream allocates nothing) and returns the close reason if the outbox
    /// is closing: nothing more can be queued then, so once `batch` is written the connection
    /// is to be closed. One lock per drain.
    public func take(into batch: inout [Frame]) -> CloseReason? {
        var spaceWaiters: [CheckedContinuation<Void, Never>] = []
        defer { for waiter in spaceWaiters { waiter.resume() } }
        return state.withLock { state in
            state.signalled = false
            if !state.queue.isEmpty {
                swap(&state.queue, &batch)
                state.bytes = 0
                if !state.spaceWaiters.isEmpty {
                    spaceWaiters = state.spaceWaiters
                    state.spaceWaiters.removeAll()
                }
            }
            return state.closing
        }
    }

    /// Queues a frame; returns false when the outbox is closed or just overflowed.
    @discardableResult
    public func enqueue(_ frame: ByteBuffer, publishedAt: Timestamp? = nil) -> Bool {
        let push = onReady != nil
        let (accepted, wakeups, signal) = state.withLock { state -> (Bool, Wakeups?, Bool) in
            guard state.closing == nil else { return (false, nil, false) }
            state.bytes += frame.readableBytes
            if state.bytes > maxBytes {
                state.queue.removeAll()
                state.bytes = 0
                return (false, state.beginClosing(.slowConsumer), Self.signal(&state, push: push))
            }
            state.queue.append(Frame(bytes: frame, publishedAt: publishedAt))
            return (true, state.waiter.take().map { Wakeups(writer: $0) }, Self.signal(&state, push: push))
        }
        wakeups?.resume()
        if signal { onReady?() }
        return accepted
    }

    /// Asks the writer to close the connection. `.goingAway` lets the queued frames go first;
    /// every other reason drops them.
    public func close(_ reason: CloseReason) {
        let push = onReady != nil
        let (wakeups, signal) = state.withLock { state -> (Wakeups?, Bool) in
            guard state.closing == nil else { return (nil, false) }
            if reason != .goingAway {
                state.queue.removeAll()
                state.bytes = 0
            }
            return (state.beginClosing(reason), Self.signal(&state, push: push))
        }
        wakeups?.resume()
        if signal { onReady?() }
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

    /// Why the outbox is closing, nil while it is open.
    public var closeReason: CloseReason? { state.withLock { $0.closing } }

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
