import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A JSON HTTP call against the test server: status, headers and parsed body.
struct HTTPResult {
    var status: Int
    var headers: [String: String]
    var json: JSON
    /// The body as received.
    var text: String = ""
}

func http(_ method: String, _ url: String, body: String? = nil, headers: [String: String] = [:]) async throws -> HTTPResult {
    var request = URLRequest(url: URL(string: url)!)
    request.httpMethod = method
    if let body {
        request.httpBody = Data(body.utf8)
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
    }
    for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
    let (data, response) = try await URLSession.shared.data(for: request)
    let http = response as! HTTPURLResponse
    var fields: [String: String] = [:]
    for (name, value) in http.allHeaderFields { fields["\(name)".lowercased()] = "\(value)" }
    let text = String(decoding: data, as: UTF8.self)
    return HTTPResult(status: http.statusCode, headers: fields, json: text.isEmpty ? .missing : try JSON.parse(text), text: text)
}

/// Reads a Server-Sent Events stream over a raw HTTP/1.1 connection, event by event.
final class SSEClient: Sendable {
    struct Event: Sendable {
        var id: String?
        var event: String?
        var data: String
        var isComment: Bool
        var json: JSON { (try? JSON.parse(data)) ?? .missing }
    }

    private let channel: any Channel
    private let events: AsyncQueue<Event>
    let status: Int

    private init(channel: any Channel, events: AsyncQueue<Event>, status: Int) {
        self.channel = channel
        self.events = events
        self.status = status
    }

    static func open(port: Int, path: String, headers: [String: String] = [:]) async throws -> SSEClient {
        let events = AsyncQueue<Event>()
        let head = AsyncQueue<Int>()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(Handler(events: events, head: head))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        var request = HTTPRequestHead(version: .http1_1, method: .GET, uri: path)
        request.headers.add(name: "Host", value: "127.0.0.1")
        request.headers.add(name: "Accept", value: "text/event-stream")
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        channel.write(HTTPClientRequestPart.head(request), promise: nil)
        try await channel.writeAndFlush(HTTPClientRequestPart.end(nil)).get()
        guard let status = await head.pop(timeout: .seconds(10)) else { throw TestFailure("no SSE response") }
        return SSEClient(channel: channel, events: events, status: status)
    }

    /// The next event (comments included), or nil after `timeout` or at the end of the stream.
    func next(timeout: Duration = .seconds(10)) async -> Event? {
        await events.pop(timeout: timeout)
    }

    /// The next non-comment event named `name`.
    func expect(_ name: String, timeout: Duration = .seconds(10)) async throws -> Event {
        let deadline = ContinuousClock.now + timeout
        while let event = await next(timeout: deadline - ContinuousClock.now) {
            if event.event == name { return event }
        }
        throw TestFailure("no SSE '\(name)' event within \(timeout)")
    }

    func close() {
        channel.close(promise: nil)
    }

    private final class Handler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPClientResponsePart
        let events: AsyncQueue<Event>
        let head: AsyncQueue<Int>
        var pending = ""

        init(events: AsyncQueue<Event>, head: AsyncQueue<Int>) {
            self.events = events
            self.head = head
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let response):
                head.push(Int(response.status.code))
            case .body(let buffer):
                pending += String(buffer: buffer)
                while let end = pending.range(of: "\n\n") {
                    let block = String(pending[..<end.lowerBound])
                    pending = String(pending[end.upperBound...])
                    events.push(Self.parse(block))
                }
            case .end:
                events.finish()
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            events.finish()
        }

        static func parse(_ block: String) -> Event {
            var event = Event(id: nil, event: nil, data: "", isComment: block.hasPrefix(":"))
            for line in block.split(separator: "\n", omittingEmptySubsequences: false) {
                if line.hasPrefix("id: ") { event.id = String(line.dropFirst(4)) }
                if line.hasPrefix("event: ") { event.event = String(line.dropFirst(7)) }
                if line.hasPrefix("data: ") { event.data += String(line.dropFirst(6)) }
            }
            return event
        }
    }
}
