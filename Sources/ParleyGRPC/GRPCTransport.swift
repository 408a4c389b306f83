import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import ParleyCore
import ServiceLifecycle

/// The gRPC server (ChatService and Health on HTTP/2, plaintext or TLS) as a service of the server's
/// group. On graceful shutdown it stops accepting calls and waits for the running ones; the
/// engine, shut down before it, has already ended every stream with UNAVAILABLE.
public struct GRPCTransport: Service {
    let server: GRPCServer<HTTP2ServerTransport.Posix>
    let host: String
    let port: Int
    let logger: Logger
    let onListening: @Sendable (Int) async -> Void

    /// `maxRequestBytes` is Parley's limit on one request message, checked by the services
    /// (RESOURCE_EXHAUSTED); the transport refuses anything over four times it before
    /// buffering it whole (it resets the stream).
    /// A PEM certificate chain and private key: gRPC over TLS (HTTP/2 negotiated by ALPN).
    public struct TLSFiles: Sendable {
        public var certificateChain: String
        public var privateKey: String

        public init(certificateChain: String, privateKey: String) {
            self.certificateChain = certificateChain
            self.privateKey = privateKey
        }
    }

    public init(
        host: String, port: Int, maxRequestBytes: Int, idleTimeout: Duration? = nil, tls: TLSFiles? = nil,
        services: [any RegistrableRPCService], logger: Logger, onListening: @escaping @Sendable (Int) async -> Void = { _ in }
    ) {
        var config = HTTP2ServerTransport.Posix.Config.defaults
        config.rpc.maxRequestPayloadSize = maxRequestBytes * 4
        // A connection with no call open is closed after this (GOAWAY): idle sockets cost
        // memory and file descriptors, and clients reconnect on demand.
        config.connection.maxIdleTime = idleTimeout
        // ... and a client that never acknowledges the closing handshake cannot keep it open.
        config.connection.maxGraceTime = .seconds(5)
        let address: GRPCNIOTransportCore.SocketAddress = host.contains(":")
            ? .ipv6(host: host, port: port) : .ipv4(host: host, port: port)
        let security: HTTP2ServerTransport.Posix.TransportSecurity = if let tls {
            .tls(
                certificateChain: [.file(path: tls.certificateChain, format: .pem)],
                privateKey: .file(path: tls.privateKey, format: .pem)
            )
        } else {
            .plaintext
        }
        self.server = GRPCServer(
            transport: .http2NIOPosix(address: address, transportSecurity: security, config: config),
            services: services
        )
        self.host = host
        self.port = port
        self.logger = logger
        self.onListening = onListening
    }

    public func run() async throws {
        try await withGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await server.serve() }
                let address: GRPCNIOTransportCore.SocketAddress
                do {
                    address = try await server.transport.listeningAddress
                } catch {
                    // The server never listened: its own error (say, the port is taken) says why.
                    do {
                        try await group.waitForAll()
                    } catch {
                        throw GRPCListenError(host: host, port: port, underlying: error)
                    }
                    throw GRPCListenError(host: host, port: port, underlying: error)
                }
                let bound = address.ipv4?.port ?? address.ipv6?.port ?? 0
                logger.info("gRPC listening on \(host):\(bound) (chat.v1.ChatService, grpc.health.v1.Health, reflection)")
                await onListening(bound)
                // A graceful shutdown waits for clients to finish; one that never answers the
                // closing handshake (an unacknowledged PING) must not keep the process alive.
                group.addTask {
                    try await gracefulShutdown()
                    try await Task.sleep(for: Self.shutdownGrace)
                    throw ForcedStop()
                }
                do {
                    _ = try await group.next()
                } catch is ForcedStop {
                    logger.warning("gRPC connections still open \(Self.shutdownGrace) after shutdown began: closing them")
                }
                group.cancelAll()
            }
        } onGracefulShutdown: {
            server.beginGracefulShutdown()
        }
    }
}

private struct ForcedStop: Error {}

extension GRPCTransport {
    /// How long a graceful shutdown waits for gRPC clients before closing their connections.
    static let shutdownGrace: Duration = .seconds(10)
}

/// The gRPC server could not listen, with the transport's reason.
struct GRPCListenError: Error, CustomStringConvertible {
    let host: String
    let port: Int
    let underlying: any Error

    var description: String {
        "gRPC could not listen on \(host):\(port) (set --grpc-port / PARLEY_GRPC_PORT): \(underlying)"
    }
}
