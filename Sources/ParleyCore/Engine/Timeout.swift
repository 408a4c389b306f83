/// A call that did not finish within its time.
public struct TimeoutError: Error, CustomStringConvertible {
    public let timeout: Duration
    public var description: String { "no answer within \(timeout)" }

    public init(timeout: Duration) {
        self.timeout = timeout
    }
}

/// Runs `body`, cancelling it and throwing `TimeoutError` once `timeout` passed. The one race of
/// a body against `Task.sleep` that every caller with a deadline shares.
public func withTimeout<T: Sendable>(_ timeout: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else { throw TimeoutError(timeout: timeout) }
        return value
    }
}
