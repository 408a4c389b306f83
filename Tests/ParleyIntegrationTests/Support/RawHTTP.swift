import NIOCore
import NIOHTTP1
import NIOPosix

/// One raw HTTP/1.1 exchange: any method, any headers (e.g. a WebSocket upgrade with an
/// `Origin`). Returns at the end of the response, or at its head for `101 Switching Protocols`;
/// status 0 when the server closed the connection without an answer.
struct RawResponse {
    var status: Int
    var headers: HTTPHeaders
    var body: String
    var json: JSON { (try? JSON.parse(body)) ?? .missing }
}

func rawHTTP(
    port: Int, _ method: HTTPMethod, _ path: String, headers: [(String, String)] = [], body: String? = nil,
    timeout: Duration = .seconds(10), untilHead: Bool = false
) async throws -> RawResponse {
    let result = AsyncQueue<RawResponse>()
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHTTPClientHandlers()
                try channel.pipeline.syncOperations.addHandler(RawResponseHandler(result: result, untilHead: untilHead))
            }
        }
        .connect(host: "127.0.0.1", port: port).get()
    var head = HTTPRequestHead(version: .http1_1, method: method, uri: path)
    head.headers.add(name: "Host", value: "127.0.0.1")
    for (name, value) in headers { head.headers.add(name: name, value: value) }
    if let body {
        head.headers.add(name: "Content-Type", value: "application/json")
        head.headers.add(name: "Content-Length", value: String(body.utf8.count))
    }
    channel.write(HTTPClientRequestPart.head(head), promise: nil)
    if let body { channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(string: body))), promise: nil) }
    // The server may answer and close before the request is fully written.
    try? await channel.writeAndFlush(HTTPClientRequestPart.end(nil)).get()
    let response = await result.pop(timeout: timeout)
    try? await channel.close()
    guard let response else { throw TestFailure("no answer to \(method) \(path)") }
    return response
}

/// The headers of a WebSocket upgrade request.
func upgradeHeaders(origin: String? = nil) -> [(String, String)] {
    var headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]
    if let origin { headers.append(("Origin", origin)) }
    return headers
}

private final class RawResponseHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    let result: AsyncQueue<RawResponse>
    /// Return at a successful head (for streams that do not end).
    let untilHead: Bool
    var response: RawResponse?

    init(result: AsyncQueue<RawResponse>, untilHead: Bool) {
        self.result = result
        self.untilHead = untilHead
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            response = RawResponse(status: Int(head.status.code), headers: head.headers, body: "")
            if head.status == .switchingProtocols || (untilHead && head.status == .ok) { finish() }
        case .body(let buffer):
            response?.body += String(buffer: buffer)
        case .end:
            finish()
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish()
        closedWithoutAnswer()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        finish()
        closedWithoutAnswer()
        context.close(promise: nil)
    }

    private var answered = false

    private func finish() {
        guard let response else { return }
        self.response = nil
        answered = true
        result.push(response)
    }

    private func closedWithoutAnswer() {
        guard !answered else { return }
        answered = true
        result.push(RawResponse(status: 0, headers: [:], body: ""))
    }
}

/// A raw TCP connection: writes bytes as given and collects what comes back, to see exactly
/// when the server closes it.
final class RawSocket: Sendable {
    let channel: any Channel
    private let received: AsyncQueue<[UInt8]>

    private init(channel: any Channel, received: AsyncQueue<[UInt8]>) {
        self.channel = channel
        self.received = received
    }

    static func connect(port: Int) async throws -> RawSocket {
        let received = AsyncQueue<[UInt8]>()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Collector(received: received))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        return RawSocket(channel: channel, received: received)
    }

    func send(_ text: String) async throws {
        try await channel.writeAndFlush(ByteBuffer(string: text)).get()
    }

    func send(bytes: [UInt8]) async throws {
        try await channel.writeAndFlush(ByteBuffer(bytes: bytes)).get()
    }

    /// The next chunk the server sent, nil after `timeout`.
    func read(timeout: Duration = .seconds(10)) async -> String? {
        await received.pop(timeout: timeout).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The next chunk as bytes; empty once the server closed; nil after `timeout`.
    func readBytes(timeout: Duration = .seconds(10)) async -> [UInt8]? {
        await received.pop(timeout: timeout)
    }

    /// Whether the server closed the connection within `timeout`.
    func closedByServer(within timeout: Duration) async -> Bool {
        let closed = AsyncQueue<Bool>()
        channel.closeFuture.whenComplete { _ in closed.push(true) }
        return await closed.pop(timeout: timeout) ?? false
    }

    func close() async {
        try? await channel.close()
    }

    private final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let received: AsyncQueue<[UInt8]>
        init(received: AsyncQueue<[UInt8]>) { self.received = received }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            received.push(Array(buffer: unwrapInboundIn(data)))
        }
        func channelInactive(context: ChannelHandlerContext) {
            received.push([])
            context.fireChannelInactive()
        }
    }
}
