import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import NIOWebSocket
import ParleyCore

/// HTTP/1 with the WebSocket upgrade at `/ws`, on SwiftNIO's own upgrade machinery. A plain
/// request is served by Hummingbird's router as usual. An upgraded `/ws` connection's pipeline
/// is one `WebSocketHandler` (which splits frames itself): the HTTP handlers are gone, and no
/// task, stream or buffer beyond a 256-byte receive buffer is kept for it while it is idle.
struct ParleyHTTPChannel: ServerChildChannel, HTTPChannelHandler {
    enum UpgradeResult: Sendable {
        /// The connection is a WebSocket now; its handler serves it on the event loop.
        case websocket
        case notUpgraded(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>)
        /// A WebSocket upgrade that was refused, with why (nil: not a valid upgrade of `/ws`).
        case failedUpgrade(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>, ParleyError?)
    }

    /// What the upgrader found, for the answer to a refused upgrade.
    struct Attempt {
        var attempted = false
        var refusal: ParleyError?
    }

    struct Value: ServerChildChannelValue {
        let upgradeResult: EventLoopFuture<UpgradeResult>
        let channel: any Channel
    }

    let responder: HTTPChannelHandler.Responder
    let http1: HTTP1Channel.Configuration
    let webSocket: WebSocketRoutes
    let socketIO: SocketIORoutes

    init(
        responder: @escaping HTTPChannelHandler.Responder, http1: HTTP1Channel.Configuration, webSocket: WebSocketRoutes,
        socketIO: SocketIORoutes
    ) {
        self.responder = Self.refusingLateUpgrades(responder)
        self.http1 = http1
        self.webSocket = webSocket
        self.socketIO = socketIO
    }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            // Reads start at 256 bytes and grow only while more data flows. Set before the
            // first read: a channel keeps its receive buffer for the next read, at the largest
            // size it ever had, so NIO's default first buffer (2 KiB) would stay with every
            // idle WebSocket (client frames are small commands) for its whole life.
            try channel.syncOptions?.setOption(
                ChannelOptions.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 256, maximum: 64 * 1024)
            )
            let attempted = NIOLoopBoundBox(Attempt(), eventLoop: channel.eventLoop)
            let upgrader = WebSocketUpgrader(routes: webSocket, socketIO: socketIO, attempted: attempted)
            let http1 = self.http1
            let upgrade = NIOTypedHTTPServerUpgradeConfiguration<UpgradeResult>(
                upgraders: [upgrader],
                notUpgradingCompletionHandler: { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: false))
                        try channel.pipeline.syncOperations.addHandlers(http1.additionalChannelHandlers())
                        try channel.pipeline.syncOperations.addHandler(
                            HTTPConnectionStateHandler(idleTimeout: http1.idleTimeout.map { .nanoseconds($0.nanoseconds) }, logger: logger)
                        )
                        let asyncChannel = try NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>(
                            wrappingChannelSynchronously: channel,
                            configuration: .init(isOutboundHalfClosureEnabled: true)
                        )
                        let attempt = attempted.value
                        return attempt.attempted ? .failedUpgrade(asyncChannel, attempt.refusal) : .notUpgraded(asyncChannel)
                    }
                }
            )
            var configuration = NIOUpgradableHTTPServerPipelineConfiguration<UpgradeResult>(upgradeConfiguration: upgrade)
            configuration.enablePipelining = false
            configuration.enableErrorHandling = false
            configuration.enableResponseHeaderValidation = false
            configuration.decoderConfiguration.maxHeaderFieldSize = http1.httpDecoder.maxHeaderFieldSize
            configuration.decoderConfiguration.maxHeaderListSize = http1.httpDecoder.maxHeaderListSize
            configuration.decoderConfiguration.maxHeaderFieldCount = http1.httpDecoder.maxHeaderFieldCount
            let result = try channel.pipeline.syncOperations.configureUpgradableHTTPServerPipeline(configuration: configuration)
            return Value(upgradeResult: result, channel: channel)
        }
    }

    func handle(value: Value, logger: Logger) async {
        do {
            switch try await value.upgradeResult.get() {
            case .websocket:
                // Served by its handler on the event loop: nothing waits for it here.
                return
            case .notUpgraded(let http1):
                await handleHTTP(asyncChannel: http1, logger: logger)
            case .failedUpgrade(let http1, let refusal):
                // The refusal's status (401, 403, 429, 503) and the HTTP API's error JSON.
                let error = refusal ?? .badRequest("not a WebSocket upgrade of /ws")
                let body = WireJSON.errorBody(error)
                var headers = error.headers
                headers[.connection] = "close"
                headers[.contentLength] = "\(body.readableBytes)"
                try await http1.executeThenClose { _, outbound in
                    try await outbound.write(contentsOf: [.head(HTTPResponse(status: error.status, headerFields: headers)), .body(body), .end(nil)])
                }
            }
        } catch {
            logger.debug("connection ended before its first request was served", metadata: ["error": "\(error)"])
        }
    }

    /// NIO decides upgrades on a connection's first request only; a later request asking for
    /// one is sent to a new connection (307 to the same target, then close).
    private static func refusingLateUpgrades(_ responder: @escaping HTTPChannelHandler.Responder) -> HTTPChannelHandler.Responder {
        struct ClosingAfterRedirect: Error {}
        return { request, writer, channel in
            guard request.headers[.upgrade]?.lowercased() == "websocket" else {
                try await responder(request, writer, channel)
                return
            }
            let target = request.uri.query.map { "\(request.uri.path)?\($0)" } ?? request.uri.path
            try await writer.writeResponse(HTTPResponse(status: .temporaryRedirect, headerFields: [.connection: "close", .location: target]))
            throw ClosingAfterRedirect()
        }
    }
}

/// The WebSocket upgrades of `/ws` and of Socket.IO's `/socket.io/` (RFC 6455 section 4.2):
/// the request is admitted by `WebSocketRoutes` (origin, credentials, connection limits) or
/// `SocketIORoutes` before the 101 is sent.
struct WebSocketUpgrader: NIOTypedHTTPServerProtocolUpgrader {
    typealias UpgradeResult = ParleyHTTPChannel.UpgradeResult
    static let guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    /// What `admit` found, for `upgrade`.
    enum Admitted {
        case parley(Identity?)
        case socketIO(SocketIOWebSocketHandler.Admission)
    }

    let routes: WebSocketRoutes
    let socketIO: SocketIORoutes
    let attempted: NIOLoopBoundBox<ParleyHTTPChannel.Attempt>
    /// Set on the channel's loop between `buildUpgradeResponse` and `upgrade`.
    private let admitted: NIOLoopBoundBox<Admitted?>

    init(routes: WebSocketRoutes, socketIO: SocketIORoutes, attempted: NIOLoopBoundBox<ParleyHTTPChannel.Attempt>) {
        self.routes = routes
        self.socketIO = socketIO
        self.attempted = attempted
        self.admitted = NIOLoopBoundBox(nil, eventLoop: attempted.eventLoop)
    }

    var supportedProtocol: String { "websocket" }
    // Checked in `buildUpgradeResponse`: NIO looks for these names in the `Connection` header.
    var requiredUpgradeHeaders: [String] { [] }

    struct Refused: Error {}

    func buildUpgradeResponse(channel: any Channel, upgradeRequest: HTTPRequestHead, initialResponseHeaders: HTTPHeaders) -> EventLoopFuture<HTTPHeaders> {
        attempted.value.attempted = true
        let keys = upgradeRequest.headers["sec-websocket-key"]
        let path = URI(upgradeRequest.uri).path
        guard keys.count == 1, upgradeRequest.headers["sec-websocket-version"] == ["13"], path == "/ws" || SocketIORoutes.paths.contains(path) else {
            return channel.eventLoop.makeFailedFuture(Refused())
        }
        let accept = Data(Insecure.SHA1.hash(data: Data((keys[0] + Self.guid).utf8))).base64EncodedString()
        let admitted = self.admitted
        let attempted = self.attempted
        let routes = self.routes
        let socketIO = self.socketIO
        return channel.eventLoop.makeFutureWithTask { () async throws -> Admitted in
            if path == "/ws" { return .parley(try await routes.admitUpgrade(upgradeRequest, channel: channel)) }
            return .socketIO(try socketIO.admitUpgrade(upgradeRequest, channel: channel))
        }.flatMapErrorThrowing { error in
            attempted.value.refusal = (error as? ParleyError) ?? .badRequest("invalid upgrade request")
            throw error
        }.map { admission in
            admitted.value = admission
            var headers = initialResponseHeaders
            headers.replaceOrAdd(name: "Upgrade", value: "websocket")
            headers.replaceOrAdd(name: "Connection", value: "upgrade")
            headers.add(name: "Sec-WebSocket-Accept", value: accept)
            return headers
        }
    }

    func upgrade(channel: any Channel, upgradeRequest: HTTPRequestHead) -> EventLoopFuture<UpgradeResult> {
        let admission = admitted.value
        let routes = self.routes
        let socketIO = self.socketIO
        return channel.eventLoop.makeCompletedFuture {
            switch admission {
            case .socketIO(let admission):
                let limit = socketIO.server.settings.maxPayload
                try channel.pipeline.syncOperations.addHandler(ClosesOnInputClosed())
                try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: limit)))
                try channel.pipeline.syncOperations.addHandler(
                    NIOWebSocketFrameAggregator(minNonFinalFragmentSize: 1, maxAccumulatedFrameCount: 64, maxAccumulatedFrameSize: limit)
                )
                try channel.pipeline.syncOperations.addHandler(SocketIOWebSocketHandler(server: socketIO.server, admission: admission))
            case .parley(let identity):
                // One handler: it splits frames itself and ends half-closed connections.
                try channel.pipeline.syncOperations.addHandler(routes.makeHandler(identity: identity))
            case nil:
                throw WebSocketUpgrader.Refused()
            }
            return .websocket
        }
    }
}

/// The client ended its side of the TCP connection (the server allows half-closed connections
/// for HTTP): a WebSocket client that did so has left, close frame or not. Without this the
/// connection sat in CLOSE_WAIT, holding its session and rooms, until the next write to it
/// failed or two ping intervals passed. First in the pipeline of a Socket.IO WebSocket, so it
/// also sees a FIN that arrived during the upgrade, which NIO's upgrade handler replays as
/// `inputClosed`. (`WebSocketHandler`, alone in its pipeline, does the same itself.)
final class ClosesOnInputClosed: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}
