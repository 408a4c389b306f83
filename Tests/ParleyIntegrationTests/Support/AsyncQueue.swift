import Synchronization

/// A queue that tests pop from with a timeout; several tasks may wait at once (FIFO).
final class AsyncQueue<Element: Sendable>: Sendable {
    private struct State {
        var items: [Element] = []
        var finished = false
        var waiters: [(id: Int, continuation: CheckedContinuation<Element?, Never>)] = []
        var nextWaiterID = 0
    }

    private let state = Mutex(State())

    func push(_ element: Element) {
        let waiter = state.withLock { state -> CheckedContinuation<Element?, Never>? in
            if !state.waiters.isEmpty { return state.waiters.removeFirst().continuation }
            state.items.append(element)
            return nil
        }
        waiter?.resume(returning: element)
    }

    func finish() {
        let waiters = state.withLock { state in
            state.finished = true
            defer { state.waiters.removeAll() }
            return state.waiters.map(\.continuation)
        }
        for waiter in waiters { waiter.resume(returning: nil) }
    }

    /// The next element, or nil when finished or after `timeout`.
    func pop(timeout: Duration) async -> Element? {
        await withCheckedContinuation { (continuation: CheckedContinuation<Element?, Never>) in
            let (immediate, id) = state.withLock { state -> (Element??, Int) in
                if !state.items.isEmpty { return (.some(state.items.removeFirst()), 0) }
                if state.finished { return (.some(nil), 0) }
                state.nextWaiterID += 1
                state.waiters.append((state.nextWaiterID, continuation))
                return (nil, state.nextWaiterID)
            }
            if let immediate {
                continuation.resume(returning: immediate)
                return
            }
            Task {
                try? await Task.sleep(for: timeout)
                self.state.withLock { state -> CheckedContinuation<Element?, Never>? in
                    guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                    return state.waiters.remove(at: index).continuation
                }?.resume(returning: nil)
            }
        }
    }
}
