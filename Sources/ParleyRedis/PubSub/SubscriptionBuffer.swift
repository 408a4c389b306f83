import NIOCore
import Synchronization

/// One subscription's bounded queue from the event loop (producer) to one consumer task.
///
/// Holds at most `capacity` messages. When full, new messages are discarded (the newest, so the
/// consumer still sees an unbroken prefix) and counted into a `.dropped(count:)` event kept in
/// order; control events never count against the capacity. The producer never waits, so a slow
/// consumer cannot slow the connection or the other subscriptions.
final class SubscriptionBuffer: Sendable {
    private struct State {
        var events = CircularBuffer<RedisSubscriptionEvent>(initialCapacity: 16)
        var messageCount = 0
        var waiter: CheckedContinuation<RedisSubscriptionEvent?, Never>?
        var finished = false
    }

    let capacity: Int
    private let state = Mutex(State())

    init(capacity: Int) {
        self.capacity = max(1, capacity)
    }

    func yield(_ event: RedisSubscriptionEvent) {
        let waiter: CheckedContinuation<RedisSubscriptionEvent?, Never>? = state.withLock { state in
            guard !state.finished else { return nil }
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            switch event {
            case .message where state.messageCount >= capacity:
                if case .dropped(let count) = state.events.last {
                    state.events[state.events.index(before: state.events.endIndex)] = .dropped(count: count + 1)
                } else {
                    state.events.append(.dropped(count: 1))
                }
            case .message:
                state.messageCount += 1
                state.events.append(event)
            case .reconnected where state.events.last == .reconnected:
                break
            case .reconnected, .dropped:
                state.events.append(event)
            }
            return nil
        }
        waiter?.resume(returning: event)
    }

    /// Ends the sequence: the consumer gets what is buffered, then nil.
    func finish() {
        let waiter = state.withLock { state in
            state.finished = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: nil)
    }

    /// The next event; nil once finished and drained, when the task is cancelled, or for a second
    /// consumer iterating at the same time (a subscription has one consumer).
    func next() async -> RedisSubscriptionEvent? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<RedisSubscriptionEvent?, Never>) in
                let immediate: RedisSubscriptionEvent?? = state.withLock { state in
                    if let event = state.events.popFirst() {
                        if case .message = event { state.messageCount -= 1 }
                        return .some(event)
                    }
                    if state.finished || state.waiter != nil || Task.isCancelled { return .some(nil) }
                    state.waiter = continuation
                    return nil
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            let waiter = state.withLock { state in
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume(returning: nil)
        }
    }

    /// The next message, skipping other events.
    func nextMessage() async -> RedisMessage? {
        while let event = await next() {
            if case .message(let message) = event { return message }
        }
        return nil
    }

    var bufferedMessages: Int { state.withLock { $0.messageCount } }
}
