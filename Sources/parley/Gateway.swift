import ArgumentParser
import Logging
import ParleyServer
import ServiceLifecycle

/// `parley gateway`: the WebSocket edge in front of Parley's gRPC service, for deployments
/// that keep the edge apart (docs/operations.md, "The gateway").
struct Gateway: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A stateless WebSocket gateway: browsers' WebSockets and Socket.IO sessions, each carried over one gRPC Chat stream to an upstream Parley."
    )

    @Option(help: "Address to listen on. [env: PARLEY_GATEWAY_HOST] (default: 0.0.0.0)")
    var host: String?

    @Option(help: "HTTP and WebSocket port; 0 picks a free one. [env: PARLEY_GATEWAY_PORT] (default: 8080)")
    var port: Int?

    @Option(help: "Upstream Parley gRPC addresses, host:port, comma-separated (or the option repeated); new connections go to the next live one. [env: PARLEY_UPSTREAMS]")
    var upstream: [String] = []

    @Flag(help: "TLS to the upstreams (HTTPS/2), their certificates checked against the system's roots or --upstream-ca-file. [env: PARLEY_UPSTREAM_TLS=1]")
    var upstreamTls = false

    @Option(help: "PEM file of the CA that signed the upstreams' certificates (implies --upstream-tls). [env: PARLEY_UPSTREAM_CA_FILE]")
    var upstreamCaFile: String?

    @Option(help: "A Parley instance's HTTP address (http://host:8080) that /api/... is passed to: the web client's uploads, downloads and Web Push settings. [env: PARLEY_API_UPSTREAM]")
    var apiUpstream: String?

    @Option(help: "Serve the web client from this folder instead of the bundled copy. [env: PARLEY_PUBLIC_DIR]")
    var publicDir: String?

    @Option(help: "Seconds between WebSocket pings to idle clients (and Engine.IO's pingInterval); a client that misses one is closed. [env: PARLEY_PING_INTERVAL] (default: 30)")
    var pingInterval: Int?

    @Option(help: "Bytes a Socket.IO session may have unsent before it is cut off as a slow consumer. [env: PARLEY_OUTBOX_BYTES] (default: 4194304)")
    var outboxBytes: Int?

    @Option(help: "Open WebSockets and Socket.IO sessions in total; 0 means no limit. [env: PARLEY_MAX_CONNECTIONS] (default: 0)")
    var maxConnections: Int?

    @Option(help: "Open WebSockets and Socket.IO sessions per client IP; 0 means no limit. [env: PARLEY_MAX_CONNECTIONS_PER_IP] (default: 0)")
    var maxConnectionsPerIp: Int?

    @Option(help: "Origins whose pages may open Socket.IO sessions, comma-separated, or *. [env: PARLEY_ALLOWED_ORIGINS] (default: *)")
    var allowedOrigins: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical. [env: PARLEY_LOG_LEVEL] (default: info)")
    var logLevel: String?

    func run() async throws {
        let env = Environment.current
        var c = GatewayConfiguration()
        c.host = host ?? env["PARLEY_GATEWAY_HOST"] ?? c.host
        c.port = try port ?? env.int("PARLEY_GATEWAY_PORT") ?? c.port
        let names = upstream.flatMap { Environment.list($0) ?? [] } + (upstream.isEmpty ? Environment.list(env["PARLEY_UPSTREAMS"]) ?? [] : [])
        c.upstreams = try names.map { name in
            guard let parsed = GatewayConfiguration.Upstream(name) else { throw ValidationError("--upstream wants host:port, got '\(name)'") }
            return parsed
        }
        c.upstreamCAFile = upstreamCaFile ?? env["PARLEY_UPSTREAM_CA_FILE"]
        c.upstreamTLS = upstreamTls || env["PARLEY_UPSTREAM_TLS"] == "1" || c.upstreamCAFile != nil
        c.apiUpstream = (apiUpstream ?? env["PARLEY_API_UPSTREAM"]).map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 }
        c.publicDirectory = publicDir ?? env["PARLEY_PUBLIC_DIR"]
        if let seconds = try pingInterval ?? env.int("PARLEY_PING_INTERVAL") { c.pingInterval = .seconds(seconds) }
        if let bytes = try outboxBytes ?? env.int("PARLEY_OUTBOX_BYTES") { c.maxOutboxBytes = bytes }
        c.maxConnections = try maxConnections ?? env.int("PARLEY_MAX_CONNECTIONS") ?? 0
        c.maxConnectionsPerIP = try maxConnectionsPerIp ?? env.int("PARLEY_MAX_CONNECTIONS_PER_IP") ?? 0
        c.allowedOrigins = Environment.list(allowedOrigins ?? env["PARLEY_ALLOWED_ORIGINS"])
        if let level = logLevel ?? env["PARLEY_LOG_LEVEL"] {
            guard let parsed = Logger.Level(rawValue: level) else { throw ValidationError("invalid log level '\(level)'") }
            c.logLevel = parsed
        }
        do {
            try c.validate()
        } catch {
            throw ValidationError(error.description)
        }
        let level = c.logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "parley.gateway")
        logger.info("can hold about \(raiseOpenFilesLimit()) connections (open files limit)")
        let services = try ParleyGateway.make(c, logger: logger)
        let group = ServiceGroup(configuration: .init(
            services: services.map {
                .init(service: $0, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup)
            },
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger
        ))
        do {
            try await group.run()
        } catch {
            logger.critical("parley gateway stopped: \(error)")
            throw ExitCode.failure
        }
    }
}
