import HummingbirdWSClient
import Logging
import NIOCore
import NIOWebSocket
import Synchronization

/// A real WebSocket client that speaks Parley's JSON frames, for tests.
final class TestClient: Sendable {
    private let inbox = AsyncQueue<String>()
    private let closeCode = AsyncQueue<Int>()
    private let outgoing: AsyncStream<WebSocketOutboundWriter.OutboundFrame>
    private let send: AsyncStream<WebSocketOutboundWriter.OutboundFrame>.Continuation
    private let ids = Atomic<Int>(0)
    /// Frames popped while waiting for a reply, kept for `next`.
    private let skipped = Mutex<[JSON]>([])
    let name: String

    private init(name: String) {
        self.name = name
        (outgoing, send) = AsyncStream.makeStream()
    }

    /// Connects to `path` (`/ws` by default) with `query` (e.g. `?user=alice`). Throws when the
    /// upgrade is refused.
    static func connect(port: Int, path: String = "/ws", query: String = "", name: String = "client") async throws -> TestClient {
        let client = TestClient(name: name)
        let opened = AsyncQueue<String?>()
        Task {
            do {
                let close = try await WebSocketClient.connect(
                    url: "ws://127.0.0.1:\(port)\(path)\(query)",
                    configuration: .init(maxFrameSize: 1 << 24, closeTimeout: .seconds(2)),
                    logger: Logger(label: "test-client")
                ) { inbound, outbound, _ in
                    opened.push(nil)
                    try await client.pump(inbound: inbound, outbound: outbound)
                }
                client.closeCode.push(close.map { Int(UInt16(webSocketErrorCode: $0.closeCode)) } ?? -1)
            } catch {
                opened.push("\(error)")
                client.closeCode.push(-1)
            }
            client.inbox.finish()
        }
        if let failure = await opened.pop(timeout: .seconds(10)) ?? "timed out" {
            throw TestFailure("websocket connect failed: \(failure)")
        }
        return client
    }

    /// Connects as `user` in open mode.
    static func connect(port: Int, user: String) async throws -> TestClient {
        try await connect(port: port, query: "?user=\(user)", name: user)
    }

    private func pump(inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for await frame in self.outgoing { try await outbound.write(frame) }
            }
            group.addTask {
                var messages = inbound.messages(maxSize: 1 << 24).makeAsyncIterator()
                while true {
                    guard let message = try await messages.next() else { break }
                    switch message {
                    case .text(let text): self.inbox.push(text)
                    case .binary: self.inbox.push("<binary>")
                    }
                }
            }
            // Either the server closed (reader ends) or `close()` finished the outgoing stream.
            try await group.next()
            group.cancelAll()
        }
    }

    // MARK: Sending

    func sendText(_ text: String) {
        send.yield(.text(text))
    }

    func sendFrame(_ frame: WebSocketOutboundWriter.OutboundFrame) {
        send.yield(frame)
    }

    func send(_ event: String, _ data: [String: Any]? = nil, id: Int? = nil) {
        var frame: [String: Any] = ["event": event]
        if let data { frame["data"] = data }
        if let id { frame["id"] = id }
        sendText(jsonText(frame))
    }

    /// Sends a frame with a fresh id and returns the `ack` or `error` answering it.
    @discardableResult
    func request(_ event: String, _ data: [String: Any]? = nil, timeout: Duration = .seconds(10)) async throws -> JSON {
        let id = ids.wrappingAdd(1, ordering: .relaxed).newValue
        send(event, data, id: id)
        var others: [JSON] = []
        defer { skipped.withLock { $0.append(contentsOf: others) } }
        while let frame = try await popFrame(timeout: timeout) {
            if frame["id"].int == id { return frame }
            others.append(frame)
        }
        throw TestFailure("\(name): no reply to \(event) #\(id)")
    }

    /// Like `request`, but fails unless the reply is an ack; returns its data.
    @discardableResult
    func ack(_ event: String, _ data: [String: Any]? = nil) async throws -> JSON {
        let reply = try await request(event, data)
        guard reply["event"].string == "ack" else { throw TestFailure("\(name): \(event) answered \(reply)") }
        return reply["data"]
    }

    // MARK: Receiving

    /// The next message as it came (not parsed), or nil after `timeout` or once closed.
    func nextText(timeout: Duration = .seconds(10)) async -> String? {
        await inbox.pop(timeout: timeout)
    }

    /// The next frame (skipped ones first), or nil after `timeout` or once closed.
    func next(timeout: Duration = .seconds(10)) async throws -> JSON? {
        if let frame = skipped.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) { return frame }
        return try await popFrame(timeout: timeout)
    }

    private func popFrame(timeout: Duration) async throws -> JSON? {
        guard let text = await inbox.pop(timeout: timeout) else { return nil }
        return try JSON.parse(text)
    }

    /// The next frame that is event `name`, skipping others; fails after `timeout`.
    func expect(_ name: String, timeout: Duration = .seconds(10), where predicate: (JSON) -> Bool = { _ in true }) async throws -> JSON {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            guard let frame = try await next(timeout: deadline - ContinuousClock.now) else { break }
            if frame["event"].string == name, predicate(frame["data"]) { return frame["data"] }
        }
        throw TestFailure("\(self.name): no '\(name)' event within \(timeout)")
    }

    /// Collects `message` events of `room` until `count` arrived.
    func messages(_ count: Int, room: String, timeout: Duration = .seconds(20)) async throws -> [JSON] {
        var result: [JSON] = []
        let deadline = ContinuousClock.now + timeout
        while result.count < count, ContinuousClock.now < deadline {
            guard let frame = try await next(timeout: deadline - ContinuousClock.now) else { break }
            if frame["event"].string == "message", frame["data"]["room"].string == room { result.append(frame["data"]) }
        }
        return result
    }

    /// Frames that arrive within `window` (to assert that nothing more comes).
    func drain(for window: Duration) async throws -> [JSON] {
        var frames: [JSON] = []
        while let frame = try await next(timeout: window) { frames.append(frame) }
        return frames
    }

    // MARK: Closing

    /// Closes the connection normally (1000) from the client side.
    func close() {
        send.finish()
    }

    /// The close code the server sent (-1 when the connection ended without one), or nil if
    /// still open after `timeout`.
    func closed(timeout: Duration = .seconds(10)) async -> Int? {
        await closeCode.pop(timeout: timeout)
    }
}
