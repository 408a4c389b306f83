import NIOCore
import Synchronization

/// Time as the engine and connections see it, injected so that deadlines, expiry, typing and
/// rate limits are tested by moving a `ManualClock` instead of sleeping.
public protocol ParleyClock: Sendable {
    /// Wall-clock time: token expiry, timestamps.
    var now: Timestamp { get }
    /// Monotonic time: rate limits, typing timeouts, coalescing windows.
    var instant: ContinuousClock.Instant { get }
    /// Runs `action` once `delay` has passed, unless the returned call is cancelled first.
    func schedule(in delay: Duration, _ action: @escaping @Sendable () -> Void) -> ScheduledCall
}

/// A pending `ParleyClock.schedule` call.
public struct ScheduledCall: Sendable {
    private let cancelAction: @Sendable () -> Void

    public init(cancel: @escaping @Sendable () -> Void) {
        self.cancelAction = cancel
    }

    public func cancel() { cancelAction() }
}

/// The real clock; timers run on an event loop (no task, no thread per timer). A WebSocket
/// schedules on its own channel's loop, so its deadlines fire where its handler lives.
public struct EventLoopClock: ParleyClock {
    public let eventLoop: any EventLoop

    public init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    public var now: Timestamp { .now }
    public var instant: ContinuousClock.Instant { .now }

    public func schedule(in delay: Duration, _ action: @escaping @Sendable () -> Void) -> ScheduledCall {
        let scheduled = eventLoop.scheduleTask(in: .nanoseconds(max(delay, .zero).nanoseconds)) { action() }
        return ScheduledCall { scheduled.cancel() }
    }
}

/// A clock that moves only when told to: `advance(by:)` runs every timer that falls due, in
/// order of their deadlines, on the caller's thread.
public final class ManualClock: ParleyClock {
    private struct Timer {
        var id: Int
        var due: Duration
        var action: @Sendable () -> Void
    }

    private struct State {
        var elapsed: Duration = .zero
        var nextID = 0
        var timers: [Timer] = []
    }

    private let state = Mutex(State())
    private let startWall: Timestamp
    private let startInstant: ContinuousClock.Instant

    public init(now: Timestamp = Timestamp(milliseconds: 1_800_000_000_000)) {
        self.startWall = now
        self.startInstant = .now
    }

    public var elapsed: Duration { state.withLock { $0.elapsed } }
    public var now: Timestamp { startWall.adding(milliseconds: elapsed.milliseconds) }
    public var instant: ContinuousClock.Instant { startInstant + elapsed }
    /// Timers scheduled and neither run nor cancelled.
    public var pendingTimers: Int { state.withLock { $0.timers.count } }

    public func schedule(in delay: Duration, _ action: @escaping @Sendable () -> Void) -> ScheduledCall {
        let id = state.withLock { state in
            state.nextID += 1
            state.timers.append(Timer(id: state.nextID, due: state.elapsed + max(delay, .zero), action: action))
            return state.nextID
        }
        return ScheduledCall { [weak self] in
            self?.state.withLock { $0.timers.removeAll { $0.id == id } }
        }
    }

    /// Moves time forward, running each timer due by then at its own deadline.
    public func advance(by duration: Duration) {
        let end = state.withLock { $0.elapsed + duration }
        while true {
            let next = state.withLock { state -> Timer? in
                guard let index = state.timers.indices.filter({ state.timers[$0].due <= end })
                    .min(by: { state.timers[$0].due < state.timers[$1].due }) else {
                    state.elapsed = end
                    return nil
                }
                let timer = state.timers.remove(at: index)
                state.elapsed = max(state.elapsed, timer.due)
                return timer
            }
            guard let next else { return }
            next.action()
        }
    }
}

/// The real clock for code that has no event loop at hand; each timer is a task that sleeps.
/// Connections use an `EventLoopClock` instead.
public struct SystemClock: ParleyClock {
    public init() {}

    public var now: Timestamp { .now }
    public var instant: ContinuousClock.Instant { .now }

    public func schedule(in delay: Duration, _ action: @escaping @Sendable () -> Void) -> ScheduledCall {
        let task = Task {
            try await Task.sleep(for: delay)
            action()
        }
        return ScheduledCall { task.cancel() }
    }
}
