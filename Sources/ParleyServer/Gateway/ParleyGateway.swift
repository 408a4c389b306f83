import AsyncHTTPClient
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Hummingbird
import HummingbirdWebSocket
import Logging
import HTTPTypes
import NIOCore
import NIOHTTP1
import NIOSSL
import NIOWebSocket
import ParleyCore
import ParleyGRPC
import Prometheus
import ServiceLifecycle
import Synchronization

/// `parley gateway`: a stateless WebSocket edge. Browsers speak Parley's WebSocket protocol to
/// it; it carries each connection over one gRPC `Chat` stream to an upstream Parley instance
/// (`chat.v1.ChatService`), passing the client's credential through. It keeps no state: when
/// an upstream dies its clients are closed (1012) and reconnect (through any gateway) to a
/// live upstream, where they resume with `since`, so every guarantee holds end to end.
public struct GatewayConfiguration: Sendable {
    public struct Upstream: Sendable, Hashable, CustomStringConvertible {
        public var host: String
        public var port: Int

        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }

        /// `host:port` (`[::1]:50051` for IPv6).
        public init?(_ text: String) {
            guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port) else {
                return nil
            }
            var host = String(text[..<colon])
            if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            guard !host.isEmpty else { return nil }
            self.init(host: host, port: port)
        }

        public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
    }

    public var host = "0.0.0.0"
    public var port = 8080
    /// Tried in turn: a new connection goes to the next live one (round robin).
    public var upstreams: [Upstream] = []
    /// TLS to the upstreams (their certificates checked against the system's roots, or
    /// `upstreamCAFile`); nil is plaintext HTTP/2.
    public var upstreamTLS = false
    public var upstreamCAFile: String?
    /// A Parley instance's HTTP address (`http://host:8080`) that `/api/...` is passed to, for
    /// the web client's uploads, downloads and Web Push settings; nil answers them 404.
    public var apiUpstream: String?
    /// Folder the web client is served from; nil serves the copy bundled with Parley.
    public var publicDirectory: String?
    public var maxFrameBytes = Limits().maxFrameBytes
    public var maxConsecutiveBadFrames = Limits().maxConsecutiveBadFrames
    /// The most a Socket.IO session may have unsent at the gateway before it is cut off as a
    /// slow consumer (a WebSocket of `/ws` is bounded by its stream's HTTP/2 window instead).
    public var maxOutboxBytes = Limits().maxOutboxBytes
    public var pingInterval: Duration = .seconds(30)
    /// How long a new connection waits for a live upstream before it is closed (1013).
    public var upstreamWait: Duration = .seconds(5)
    /// How often each upstream's gRPC health is checked.
    public var healthInterval: Duration = .seconds(1)
    /// How long a Socket.IO client has to answer the Engine.IO ping (sent every `pingInterval`).
    public var socketIOPingTimeout: Duration = .seconds(20)
    /// Pages of these origins may open Socket.IO sessions (`*` or nil: any). The upstream never
    /// sees a browser's `Origin` through gRPC, so this is the gateway's to check.
    public var allowedOrigins: [String]?
    /// Open WebSockets and Socket.IO sessions in total, and per client address; 0: no limit.
    /// (The upstreams see every client of a gateway as the gateway's one address.)
    public var maxConnections = 0
    public var maxConnectionsPerIP = 0
    public var logLevel = Logger.Level.info

    public init() {}

    /// Refuses settings the gateway cannot run with, whoever built them (the executable or
    /// code that embeds the gateway), as `ServerConfiguration.validate` does for the server.
    public func validate() throws(InvalidConfiguration) {
        func check(_ condition: Bool, _ message: String) throws(InvalidConfiguration) {
            if !condition { throw InvalidConfiguration(description: message) }
        }
        try check(!upstreams.isEmpty, "give at least one --upstream host:port (a Parley instance's gRPC port, 50051 by default)")
        try check((0...65535).contains(port), "the port must be 0...65535")
        if let api = apiUpstream {
            try check(api.hasPrefix("http://") || api.hasPrefix("https://"), "--api-upstream must be an http:// or https:// URL, got '\(api)'")
        }
        try check(pingInterval >= .seconds(1), "--ping-interval must be at least 1 second")
        try check(maxOutboxBytes >= 1024, "--outbox-bytes must be at least 1024")
        try check(maxConnections >= 0 && maxConnectionsPerIP >= 0, "connection limits must be 0 (none) or more")
    }
}

public enum ParleyGateway {
    public static let metricsPaths = ["/ws-metrics", "/metrics"]

    /// The gateway's services: its HTTP server, its upstream clients and their health checks.
    public static func make(
        _ configuration: GatewayConfiguration, logger: Logger, onListening: (@Sendable (Int) -> Void)? = nil
    ) throws -> [any Service] {
        try configuration.validate()
        let registry = PrometheusCollectorRegistry()
        let metrics = GatewayMetrics(registry: registry)
        let upstreams = try UpstreamPool(configuration, metrics: metrics, logger: logger)
        let bridge = GatewayBridge(configuration: configuration, upstreams: upstreams, metrics: metrics, logger: logger)

        let router = Router(context: GatewayRequestContext.self)
        // Errors (an unreachable API upstream, a body too large) as Parley's JSON errors.
        router.add(middleware: APIErrorMiddleware())
        router.add(middleware: FileMiddleware(
            configuration.publicDirectory ?? ParleyServer.bundledPublicDirectory(), searchForIndexHtml: true, logger: logger
        ))
        for path in metricsPaths {
            router.get(RouterPath(path)) { _, _ -> Response in
                var buffer = [UInt8]()
                registry.emit(into: &buffer)
                return Response(
                    status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                    body: .init(byteBuffer: ByteBuffer(bytes: buffer))
                )
            }
        }
        router.get("/healthz") { _, _ in Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: "ok\n"))) }
        router.get("/readyz") { _, _ -> Response in
            let live = upstreams.liveCount
            return Response(
                status: live > 0 ? .ok : .serviceUnavailable,
                body: .init(byteBuffer: ByteBuffer(string: live > 0 ? "ready: \(live) of \(configuration.upstreams.count) upstreams\n" : "no upstream\n"))
            )
        }
        // Socket.IO: polling on the router; WebSocket upgrades (of `/ws` and `/socket.io/`,
        // whose polling `GET` shares its path) on a router of their own.
        let socketIO = SocketIORoutes(server: bridge.socketIOServer(), origins: OriginPolicy(configuration.allowedOrigins))
        socketIO.register(on: router)
        let upgrades = Router(context: GatewayRequestContext.self)
        upgrades.ws("/ws") { _, context in
            do throws(ParleyError) {
                let ticket = try bridge.connections.acquire(address: context.channel.remoteAddress?.ipAddress)
                context.admitted.ticket.withLock { $0 = ticket }
            } catch {
                context.admitted.refusal.withLock { $0 = error }
            }
            return .upgrade([:])
        } onUpgrade: { inbound, outbound, context in
            if await context.requestContext.admitted.refused(outbound) { return }
            let ticket = context.requestContext.admitted.ticket.withLock { $0.take() }
            defer { ticket?.release() }
            await bridge.serve(inbound: inbound, outbound: outbound, request: context.request)
        }
        upgrades.ws("socket.io") { request, context in
            do {
                let admission = try socketIO.admitUpgrade(
                    uri: request.uri.description, origin: request.headers[.origin], host: request.head.authority,
                    address: context.channel.remoteAddress?.ipAddress
                )
                context.admitted.socketIO.withLock { $0 = admission }
                return .upgrade([:])
            } catch let error as ParleyError where error.code == .rateLimited || error.code == .unavailable {
                context.admitted.refusal.withLock { $0 = error }
                return .upgrade([:])
            } catch {
                return .dontUpgrade
            }
        } onUpgrade: { inbound, outbound, context in
            if await context.requestContext.admitted.refused(outbound) { return }
            guard let admission = context.requestContext.admitted.socketIO.withLock({ $0.take() }) else { return }
            await GatewaySocketIOSocket.serve(
                admission, server: socketIO.server, eventLoop: context.requestContext.channel.eventLoop, metrics: metrics,
                inbound: inbound, outbound: outbound
            )
        }
        if let api = configuration.apiUpstream {
            let proxy = APIProxy(upstream: api, maxBody: Int(Limits().maxAttachmentBytes) + 64 * 1024)
            for method in [HTTPRequest.Method.get, .post, .put, .patch, .delete, .head] {
                router.on("/api/**", method: method) { request, _ in try await proxy.forward(request) }
            }
        }
        let app = Application(
            router: router,
            server: .http1WebSocketUpgrade(
                webSocketRouter: upgrades,
                configuration: .init(
                    ws: .init(
                        maxFrameSize: configuration.maxFrameBytes,
                        autoPing: .enabled(timePeriod: configuration.pingInterval),
                        closeTimeout: .seconds(5)
                    )
                )
            ),
            configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "Parley"),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? configuration.port
                logger.info("gateway listening on http://\(configuration.host):\(port) (WebSocket at /ws, metrics at /ws-metrics)")
                onListening?(port)
            },
            logger: logger
        )
        // Services shut down in reverse order: the drain closes every client going away (1001)
        // before the HTTP server stops, and the upstream connections go last.
        return [upstreams, app, GatewayDrain(bridge: bridge, socketIO: socketIO.server)]
    }
}

/// At shutdown, closes the gateway's clients as going away (WebSocket 1001, Socket.IO's
/// transport close), so that they reconnect through another gateway and resume, and gives them
/// up to two seconds to answer.
struct GatewayDrain: Service {
    let bridge: GatewayBridge
    let socketIO: SocketIOServer

    func run() async throws {
        try? await gracefulShutdown()
        socketIO.closeAll(.goingAway)
        await bridge.closeAll()
        let deadline = ContinuousClock.now + .seconds(2)
        while bridge.openWebSockets + socketIO.count > 0, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
    }
}

// MARK: Metrics

/// The gateway's own metrics (`/ws-metrics`): connections, frames each way, upstream stream
/// errors, and the upstream's reply time per command.
final class GatewayMetrics: Sendable {
    let connections: Prometheus.Gauge
    let framesIn: Prometheus.Counter
    let framesOut: Prometheus.Counter
    let upstreamErrors: Prometheus.Counter
    let upstreamStreams: Prometheus.Counter
    let socketIOSessions: Prometheus.Gauge
    let slowConsumers: Prometheus.Counter
    let replySeconds: Prometheus.DurationHistogram
    private let registry: PrometheusCollectorRegistry

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
        connections = registry.makeGauge(descriptor: MetricNameDescriptor(metricName: "parley_gateway_connections", unitName: "", helpText: "Open WebSocket connections."))
        framesIn = registry.makeCounter(descriptor: MetricNameDescriptor(metricName: "parley_gateway_frames_total", unitName: "", helpText: "WebSocket frames: in from clients, out to them."), labels: [("direction", "in")])
        framesOut = registry.makeCounter(descriptor: MetricNameDescriptor(metricName: "parley_gateway_frames_total", unitName: "", helpText: "WebSocket frames: in from clients, out to them."), labels: [("direction", "out")])
        upstreamErrors = registry.makeCounter(descriptor: MetricNameDescriptor(metricName: "parley_gateway_upstream_errors_total", unitName: "", helpText: "Upstream streams that failed or were ended by the upstream."))
        slowConsumers = registry.makeCounter(descriptor: MetricNameDescriptor(metricName: "parley_gateway_slow_consumers_total", unitName: "", helpText: "Socket.IO sessions cut off at the gateway because their unsent backlog passed --outbox-bytes."))
        socketIOSessions = registry.makeGauge(descriptor: MetricNameDescriptor(metricName: "parley_gateway_socketio_sessions", unitName: "", helpText: "Open Socket.IO sessions (polling or WebSocket)."))
        upstreamStreams = registry.makeCounter(descriptor: MetricNameDescriptor(metricName: "parley_gateway_upstream_streams_total", unitName: "", helpText: "Chat streams opened to upstreams."))
        replySeconds = registry.makeDurationHistogram(
            descriptor: MetricNameDescriptor(metricName: "parley_gateway_upstream_reply_seconds", unitName: "", helpText: "Time from a command to the upstream's ack or error."),
            buckets: [.milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
                      .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5)]
        )
    }

    func upstream(_ upstream: GatewayConfiguration.Upstream) -> Prometheus.Gauge {
        registry.makeGauge(descriptor: MetricNameDescriptor(metricName: "parley_gateway_upstream_up", unitName: "", helpText: "1 while the upstream answers its health check."), labels: [("upstream", upstream.description)])
    }
}

// MARK: Upstreams

/// The upstreams, each reached over as many HTTP/2 connections as its streams need (100
/// streams to a connection, HTTP/2's usual limit: a gateway holds one stream per browser),
/// checked with `grpc.health.v1.Health` every `healthInterval`; new streams go to the next live
/// upstream.
final class UpstreamPool: Service, Sendable {
    typealias Client = GRPCClient<HTTP2ClientTransport.Posix>
    static let streamsPerConnection = 100

    final class Member: Sendable {
        let upstream: GatewayConfiguration.Upstream
        let live = Atomic<Bool>(false)
        let gauge: Prometheus.Gauge
        private let makeClient: @Sendable () throws -> Client
        /// Each connection with the streams it carries now.
        private let connections = Mutex<[(client: Client, streams: Int)]>([])
        let started: AsyncStream<Client>
        private let start: AsyncStream<Client>.Continuation
        /// The first connection, which also carries the health checks.
        let first: Client

        init(upstream: GatewayConfiguration.Upstream, gauge: Prometheus.Gauge, makeClient: @escaping @Sendable () throws -> Client) throws {
            self.upstream = upstream
            self.gauge = gauge
            self.makeClient = makeClient
            (started, start) = AsyncStream.makeStream()
            first = try makeClient()
            connections.withLock { $0.append((first, 0)) }
            start.yield(first)
        }

        /// A connection with room for one more stream (a new one when all are full); give
        /// the index back with `release`.
        func lease() throws -> (Client, Int) {
            try connections.withLock { connections in
                if let index = connections.indices.min(by: { connections[$0].streams < connections[$1].streams }),
                    connections[index].streams < UpstreamPool.streamsPerConnection
                {
                    connections[index].streams += 1
                    return (connections[index].client, index)
                }
                let client = try makeClient()
                connections.append((client, 1))
                start.yield(client)
                return (client, connections.count - 1)
            }
        }

        func release(_ index: Int) {
            connections.withLock { $0[index].streams -= 1 }
        }

        func shutDown() {
            start.finish()
            for (client, _) in connections.withLock({ $0 }) { client.beginGracefulShutdown() }
        }
    }

    private let members: [Member]
    private let next = Atomic<Int>(0)
    private let configuration: GatewayConfiguration
    private let logger: Logger

    init(_ configuration: GatewayConfiguration, metrics: GatewayMetrics, logger: Logger) throws {
        self.configuration = configuration
        self.logger = logger
        let security: HTTP2ClientTransport.Posix.TransportSecurity = if configuration.upstreamTLS {
            .tls { tls in
                if let ca = configuration.upstreamCAFile { tls.trustRoots = .certificates([.file(path: ca, format: .pem)]) }
            }
        } else {
            .plaintext
        }
        members = try configuration.upstreams.map { upstream in
            try Member(upstream: upstream, gauge: metrics.upstream(upstream)) {
                let transport = try HTTP2ClientTransport.Posix(
                    target: .dns(host: upstream.host, port: upstream.port), transportSecurity: security,
                    config: .defaults { config in
                        // Bounded buffering per stream, so that a client that stops reading makes
                        // the upstream cut it off (slow consumer) instead of the gateway holding
                        // megabytes for it.
                        config.http2.targetWindowSize = 256 * 1024
                        config.connection.maxIdleTime = nil
                        config.backoff = .init(initial: .milliseconds(100), max: .seconds(2), multiplier: 1.6, jitter: 0.2)
                    }
                )
                return GRPCClient(transport: transport)
            }
        }
    }

    var liveCount: Int { members.count { $0.live.load(ordering: .relaxed) } }

    func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            for member in members {
                group.addTask {
                    await withTaskGroup(of: Void.self) { connections in
                        for await client in member.started {
                            connections.addTask { try? await client.runConnections() }
                        }
                    }
                }
                group.addTask { await self.watch(member) }
            }
            try? await gracefulShutdown()
            for member in members { member.shutDown() }
            group.cancelAll()
        }
    }

    /// Live from the first answered check; down after three unanswered in a row (a busy
    /// upstream answers late, and a join storm must not take it out of rotation) or at once
    /// when a stream to it fails as an unreachable server fails (`markDown`).
    private func watch(_ member: Member) async {
        let health = Grpc_Health_V1_Health.Client(wrapping: member.first)
        var misses = 0
        while !Task.isCancelled {
            var options = CallOptions.defaults
            options.timeout = .seconds(2)
            options.waitForReady = false
            let serving = (try? await health.check(.with { $0.service = "chat.v1.ChatService" }, options: options).status == .serving) ?? false
            misses = serving ? 0 : misses + 1
            if serving || misses >= 3 || !member.live.load(ordering: .relaxed) { setLive(member, serving) }
            try? await Task.sleep(for: configuration.healthInterval)
        }
    }

    private func setLive(_ member: Member, _ live: Bool) {
        let was = member.live.exchange(live, ordering: .relaxed)
        member.gauge.set(live ? Int64(1) : Int64(0))
        guard was != live else { return }
        logger.info(live ? "upstream is up" : "upstream is down", metadata: ["upstream": "\(member.upstream)"])
    }

    /// A stream failed as an unreachable upstream fails: take it out at once (its health check
    /// brings it back).
    func markDown(_ upstream: GatewayConfiguration.Upstream) {
        guard let member = members.first(where: { $0.upstream == upstream }) else { return }
        setLive(member, false)
    }

    /// The next live upstream, waiting up to `wait` for one (looking again every 50 ms: any
    /// number of new connections may be waiting, each on its own).
    func pick(wait: Duration) async -> Member? {
        let deadline = ContinuousClock.now + wait
        while true {
            let start = next.wrappingAdd(1, ordering: .relaxed).oldValue
            for offset in 0..<members.count {
                let member = members[(start + offset) % members.count]
                if member.live.load(ordering: .relaxed) { return member }
            }
            guard ContinuousClock.now < deadline, (try? await Task.sleep(for: .milliseconds(50))) != nil else { return nil }
        }
    }
}

// MARK: Bridging one WebSocket to one Chat stream

final class GatewayBridge: Sendable {
    let configuration: GatewayConfiguration
    let upstreams: UpstreamPool
    let metrics: GatewayMetrics
    let logger: Logger
    private let decoder = ClientFrameDecoder()
    /// Every client connection of the gateway counts here (`/ws` and Socket.IO).
    let connections: ConnectionLimiter

    init(configuration: GatewayConfiguration, upstreams: UpstreamPool, metrics: GatewayMetrics, logger: Logger) {
        self.configuration = configuration
        self.upstreams = upstreams
        self.metrics = metrics
        self.logger = logger
        connections = ConnectionLimiter(maxTotal: configuration.maxConnections, maxPerAddress: configuration.maxConnectionsPerIP)
    }

    /// Socket.IO sessions whose commands go upstream, each over a `Chat` stream of its own.
    func socketIOServer() -> SocketIOServer {
        var limits = Limits()
        limits.maxFrameBytes = configuration.maxFrameBytes
        limits.maxConsecutiveBadFrames = configuration.maxConsecutiveBadFrames
        limits.maxOutboxBytes = configuration.maxOutboxBytes
        let host = SocketIOServer.Host(
            instanceID: "gateway-" + SocketIOServer.newID(), connections: connections,
            isDraining: { false }, metrics: metrics,
            link: { _, outbox, resumeReading in UpstreamLink(bridge: self, outbox: outbox, resumeReading: resumeReading) }
        )
        // The handshake deadline and token expiry are the upstream's to enforce.
        let settings = SocketIOServer.Settings(
            limits: limits, handshakeTimeout: .seconds(10), refreshGrace: .seconds(30), pingInterval: configuration.pingInterval,
            pingTimeout: configuration.socketIOPingTimeout
        )
        return SocketIOServer(host: host, settings: settings, logger: logger)
    }

    /// Why the WebSocket closes.
    struct Close: Sendable {
        var code: WebSocketErrorCode
        var reason: String
    }

    /// The commands sent and not yet answered, by the request id they went with.
    final class Pending: Sendable {
        private let state = Mutex<(next: Int, open: [String: (ParleyCore.RequestID, ContinuousClock.Instant)])>((0, [:]))

        func add(_ id: ParleyCore.RequestID?) -> String {
            guard let id else { return "" }
            return state.withLock { state in
                state.next += 1
                let key = String(state.next)
                state.open[key] = (id, .now)
                return key
            }
        }

        func take(_ key: String) -> (ParleyCore.RequestID, ContinuousClock.Instant)? {
            guard !key.isEmpty else { return nil }
            return state.withLock { $0.open.removeValue(forKey: key) }
        }
    }

    /// The open WebSockets of `/ws`, each with how to close it going away.
    private let open = Mutex<(next: Int, closers: [Int: @Sendable () async -> Void])>((0, [:]))

    private func track(_ outbound: WebSocketOutboundWriter) -> Int {
        open.withLock { open in
            open.next += 1
            open.closers[open.next] = { try? await outbound.close(.goingAway, reason: "gateway shutting down: reconnect and resume with since") }
            return open.next
        }
    }

    var openWebSockets: Int { open.withLock { $0.closers.count } }

    /// Closes every WebSocket of `/ws` with 1001: the gateway is shutting down.
    func closeAll() async {
        let closers = open.withLock { Array($0.closers.values) }
        await withTaskGroup(of: Void.self) { group in
            for close in closers { group.addTask { await close() } }
        }
    }

    func serve(inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter, request: Request) async {
        metrics.connections.increment()
        let tracked = track(outbound)
        defer {
            open.withLock { _ = $0.closers.removeValue(forKey: tracked) }
            metrics.connections.decrement()
        }
        guard let member = await upstreams.pick(wait: configuration.upstreamWait) else {
            try? await outbound.close(.unknown(1013), reason: "no upstream available: try again later")
            return
        }
        var metadata = Metadata()
        let query = request.uri.queryParameters
        let token = BearerToken.parse(request.headers[.authorization]) ?? query["token"].map(String.init)
        if let token { metadata.addString("Bearer \(token)", forKey: "authorization") }
        let (commands, feed) = AsyncStream.makeStream(of: Chat_V1_ChatCommand.self)
        // Open mode: `?user=` is a `connect` the client does not hear the answer of, as a
        // WebSocket that named its user at the upgrade hears nothing.
        let credentials = metadata
        if token == nil, let user = query["user"] { feed.yield(Chat_V1_ChatCommand(.connect(token: nil, user: String(user)), requestID: "")) }
        let pending = Pending()

        await withTaskGroup(of: Void.self) { group in
            // The upstream side ends by closing the WebSocket, which ends the client side once
            // the client answers the close (or the close times out).
            group.addTask {
                if let close = await self.relayUpstream(member, metadata: credentials, commands: commands, pending: pending, outbound: outbound) {
                    try? await outbound.close(close.code, reason: close.reason)
                }
            }
            let close = await self.relayClient(inbound, outbound: outbound, feed: feed, pending: pending)
            feed.finish()
            if let close { try? await outbound.close(close.code, reason: close.reason) }
            group.cancelAll()
        }
    }

    /// How an upstream stream ended.
    enum StreamEnd {
        /// The client side went first (the task was cancelled), or its socket failed.
        case clientGone
        /// The upstream ended the stream without an error.
        case ended
        case failed(RPCError)
        /// No connection to the upstream could be made.
        case unreachable
    }

    /// Carries `commands` to `member` over one `Chat` stream and hands every frame it sends to
    /// `onFrame`, until the stream ends.
    func stream(
        _ member: UpstreamPool.Member, metadata: Metadata, commands: AsyncStream<Chat_V1_ChatCommand>,
        onFrame: @escaping @Sendable (UpstreamFrame) async throws -> Void
    ) async -> StreamEnd {
        let connection: (UpstreamPool.Client, Int)
        do {
            connection = try member.lease()
        } catch {
            return .unreachable
        }
        defer { member.release(connection.1) }
        metrics.upstreamStreams.increment()
        let chat = Chat_V1_ChatService.Client(wrapping: connection.0)
        var options = CallOptions.defaults
        options.waitForReady = false
        do {
            try await chat.chat(metadata: metadata, options: options) { writer in
                for await command in commands { try await writer.write(command) }
            } onResponse: { response in
                for try await event in response.messages {
                    guard let frame = UpstreamFrame(event) else { continue }
                    try await onFrame(frame)
                }
            }
            return Task.isCancelled ? .clientGone : .ended
        } catch let error as RPCError {
            if Task.isCancelled { return .clientGone }
            metrics.upstreamErrors.increment()
            logger.debug("upstream stream ended", metadata: ["upstream": "\(member.upstream)", "error": "\(error)"])
            return .failed(error)
        } catch {
            return .clientGone
        }
    }

    /// Upstream events to the client, until the stream ends; then how to close the WebSocket
    /// (nil when the client went first).
    private func relayUpstream(
        _ member: UpstreamPool.Member, metadata: Metadata, commands: AsyncStream<Chat_V1_ChatCommand>, pending: Pending,
        outbound: WebSocketOutboundWriter
    ) async -> Close? {
        let end = await stream(member, metadata: metadata, commands: commands) { frame in
            guard let bytes = self.encode(frame, pending: pending) else { return }
            try await outbound.write(.custom(WebSocketFrame(fin: true, opcode: .text, data: WebSocketWire.payload(of: bytes))))
            self.metrics.framesOut.increment()
        }
        switch end {
        case .clientGone: return nil
        case .ended: return Close(code: .goingAway, reason: "server shutting down: reconnect and resume with since")
        case .failed(let error): return Self.close(for: error, upstream: member.upstream, pool: upstreams)
        case .unreachable: return Close(code: .unexpectedServerError, reason: "could not reach the upstream")
        }
    }

    /// What an upstream stream's error means for its client.
    enum Failure {
        /// The client stopped reading and the upstream cut it off; it may resume.
        case slowConsumer
        /// The upstream refused the client (a credential, bad commands): it should not retry as it is.
        case refused(String)
        /// The upstream is shutting down; the client reconnects elsewhere.
        case shuttingDown
        /// The upstream died or cannot be reached; it is taken out of rotation.
        case upstreamDown
        case other(String)
    }

    static func failure(of error: RPCError, upstream: GatewayConfiguration.Upstream, pool: UpstreamPool) -> Failure {
        switch error.code {
        case .resourceExhausted:
            return .slowConsumer
        case .unauthenticated, .invalidArgument, .permissionDenied:
            return .refused(String(error.message.prefix(120)))
        case .unavailable where error.message.hasPrefix("server shutting down"):
            return .shuttingDown
        case .unavailable, .deadlineExceeded, .cancelled, .unknown:
            pool.markDown(upstream)
            return .upstreamDown
        default:
            return .other(String(error.message.prefix(120)))
        }
    }

    static func close(for error: RPCError, upstream: GatewayConfiguration.Upstream, pool: UpstreamPool) -> Close {
        switch failure(of: error, upstream: upstream, pool: pool) {
        case .slowConsumer: Close(code: .unknown(1013), reason: "slow consumer: resume with since")
        case .refused(let why): Close(code: .policyViolation, reason: why)
        case .shuttingDown: Close(code: .goingAway, reason: "server shutting down: reconnect and resume with since")
        case .upstreamDown: Close(code: .unknown(1012), reason: "upstream unavailable: reconnect and resume with since")
        case .other(let why): Close(code: .unexpectedServerError, reason: why)
        }
    }

    /// Client frames to the upstream, until the client leaves (nil) or breaks the protocol.
    private func relayClient(
        _ inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter, feed: AsyncStream<Chat_V1_ChatCommand>.Continuation,
        pending: Pending
    ) async -> Close? {
        var bad = 0
        do {
            for try await message in inbound.messages(maxSize: configuration.maxFrameBytes) {
                metrics.framesIn.increment()
                guard case .text(let text) = message else {
                    return Close(code: .policyViolation, reason: "binary frames are not supported")
                }
                switch decoder.decode(text) {
                case .success(let (id, command)):
                    bad = 0
                    feed.yield(Chat_V1_ChatCommand(command, requestID: pending.add(id)))
                case .failure(let failure):
                    // Answered here, as the server answers a frame it cannot decode.
                    let frame = WebSocketFrames.shared.encode(failure.error, id: failure.id)
                    try await outbound.write(.custom(WebSocketFrame(fin: true, opcode: .text, data: WebSocketWire.payload(of: frame))))
                    metrics.framesOut.increment()
                    bad += 1
                    if bad >= configuration.maxConsecutiveBadFrames {
                        return Close(code: .policyViolation, reason: "too many bad commands in a row")
                    }
                }
            }
        } catch {
            return Close(code: .messageTooLarge, reason: "frame larger than \(configuration.maxFrameBytes) bytes")
        }
        return nil
    }

    /// The WebSocket frame for an upstream frame, as the server would have sent it itself.
    private func encode(_ frame: UpstreamFrame, pending: Pending) -> ByteBuffer? {
        switch frame {
        case .event(let event):
            return WebSocketFrames.shared.encode(event)
        case .reply(let reply, let key):
            let sent = pending.take(key)
            if let sent { metrics.replySeconds.record(ContinuousClock.now - sent.1) }
            return WebSocketFrames.shared.encode(reply, id: sent?.0)
        case .error(let error, let key):
            let sent = pending.take(key)
            if let sent { metrics.replySeconds.record(ContinuousClock.now - sent.1) }
            return WebSocketFrames.shared.encode(error, id: sent?.0)
        }
    }
}

// MARK: /api to an instance

/// Passes `/api/...` to a Parley instance's HTTP port (uploads, downloads, Web Push settings of
/// the web client): method, path, query, body and the headers that matter, both ways.
struct APIProxy: Sendable {
    let upstream: String
    let maxBody: Int
    static let requestHeaders: [HTTPField.Name] = [.authorization, .contentType, .accept, .range, .ifNoneMatch, .origin]
    static let responseHeaders: [HTTPField.Name] = [
        .contentType, .contentLength, .contentDisposition, .cacheControl, .eTag, .contentRange, .acceptRanges, .retryAfter, .location,
    ]

    func forward(_ request: Request) async throws -> Response {
        var outbound = HTTPClientRequest(url: upstream + (request.uri.string.hasPrefix("/") ? request.uri.string : "/" + request.uri.string))
        outbound.method = HTTPMethod(rawValue: request.method.rawValue)
        for name in Self.requestHeaders {
            for value in request.headers[values: name] { outbound.headers.add(name: name.rawName, value: value) }
        }
        if request.method != .get, request.method != .head {
            outbound.body = .bytes(try await request.body.collect(upTo: maxBody))
        }
        let answer: HTTPClientResponse
        do {
            answer = try await HTTPClient.shared.execute(outbound, timeout: .seconds(60))
        } catch {
            throw ParleyError.unavailable("the API upstream did not answer")
        }
        var headers = HTTPFields()
        for name in Self.responseHeaders {
            for value in answer.headers[name.rawName] { headers.append(HTTPField(name: name, value: value)) }
        }
        let body = try await answer.body.collect(upTo: maxBody)
        return Response(status: .init(code: Int(answer.status.code)), headers: headers, body: .init(byteBuffer: body))
    }
}
