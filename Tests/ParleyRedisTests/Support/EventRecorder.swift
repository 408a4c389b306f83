import ParleyRedis
import ServiceLifecycle
import Synchronization

/// Collects a client's connection events so a test can wait for one.
final class EventRecorder: Sendable {
    private let events = Mutex<[RedisConnectionEvent]>([])

    var all: [RedisConnectionEvent] { events.withLock { $0 } }

    var record: @Sendable (RedisConnectionEvent) -> Void {
        { event in self.events.withLock { $0.append(event) } }
    }

    func count(_ matching: (RedisConnectionEvent) -> Bool) -> Int {
        events.withLock { $0.filter(matching).count }
    }

    /// Waits (at most `seconds`) until `count` events match.
    func wait(
        for count: Int = 1,
        seconds: Int = 10,
        _ matching: @escaping (RedisConnectionEvent) -> Bool
    ) async throws {
        for _ in 0..<(seconds * 100) {
            if self.count(matching) >= count { return }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw RedisError(.timeout, "events seen: \(all)")
    }

    func wait(for count: Int = 1, _ event: RedisConnectionEvent) async throws {
        try await wait(for: count) { $0 == event }
    }
}

/// Runs `service` in the background during `body`, then cancels it and waits for it to stop.
func withRunning<Result>(_ service: some Service, _ body: () async throws -> Result) async throws -> Result {
    let task = Task { try await service.run() }
    do {
        let result = try await body()
        task.cancel()
        _ = await task.result
        return result
    } catch {
        task.cancel()
        _ = await task.result
        throw error
    }
}
