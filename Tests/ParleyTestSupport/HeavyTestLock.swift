import Synchronization

/// Lets one test that runs several servers at a time proceed, whichever suite it is in: the
/// whole test process runs in parallel on a small machine, and timing-sensitive tests elsewhere
/// must not starve while clusters start.
public func withHeavyTestLock<T>(_ body: () async throws -> T) async throws -> T {
    await HeavyTestLock.shared.acquire()
    do {
        let result = try await body()
        HeavyTestLock.shared.release()
        return result
    } catch {
        HeavyTestLock.shared.release()
        throw error
    }
}

final class HeavyTestLock: Sendable {
    static let shared = HeavyTestLock()

    private struct State {
        var held = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())

    func acquire() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let acquired = state.withLock { state -> Bool in
                if !state.held {
                    state.held = true
                    return true
                }
                state.waiters.append(continuation)
                return false
            }
            if acquired { continuation.resume() }
        }
    }

    func release() {
        let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if state.waiters.isEmpty {
                state.held = false
                return nil
            }
            return state.waiters.removeFirst()
        }
        next?.resume()
    }
}
