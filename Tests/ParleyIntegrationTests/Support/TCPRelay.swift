import NIOCore
import NIOPosix
import Synchronization

/// A loopback TCP relay to `targetPort` whose server-to-client direction can be paused: the
/// relay then stops reading from the server, as a client that stops reading its socket would.
/// It lets a test make any protocol's client (here gRPC) a truly slow consumer.
final class TCPRelay: Sendable {
    private let listener: any Channel
    private let upstreams = Mutex<[any Channel]>([])
    let port: Int

    private init(listener: any Channel, port: Int) {
        self.listener = listener
        self.port = port
    }

    static func start(to targetPort: Int) async throws -> TCPRelay {
        let relay = Mutex<TCPRelay?>(nil)
        let listener = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { downstream in
                // The client side waits until the server side is connected.
                downstream.setOption(.autoRead, value: false).flatMap {
                    ClientBootstrap(group: downstream.eventLoop)
                        .channelOption(.socketOption(.so_rcvbuf), value: 16 * 1024)
                        .channelInitializer { upstream in
                            upstream.pipeline.addHandler(Forward(to: downstream))
                        }
                        .connect(host: "127.0.0.1", port: targetPort)
                }.flatMap { upstream in
                    relay.withLock { $0 }?.upstreams.withLock { $0.append(upstream) }
                    return downstream.pipeline.addHandler(Forward(to: upstream)).flatMap {
                        downstream.setOption(.autoRead, value: true)
                    }
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let started = TCPRelay(listener: listener, port: listener.localAddress!.port!)
        relay.withLock { $0 = started }
        return started
    }

    /// Stops (false) or resumes (true) reading what the server sends.
    func setServerReading(_ reading: Bool) async throws {
        for upstream in upstreams.withLock({ $0 }) {
            try await upstream.setOption(.autoRead, value: reading).get()
            if reading { upstream.read() }
        }
    }

    func stop() async {
        try? await listener.close()
        for upstream in upstreams.withLock({ $0 }) { try? await upstream.close() }
    }

    /// Writes what one side reads to the other, and closes the other when one closes.
    private final class Forward: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let peer: any Channel

        init(to peer: any Channel) { self.peer = peer }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            peer.writeAndFlush(Self.unwrapInboundIn(data), promise: nil)
        }

        /// Closes the other side once everything read before the close is written to it (an
        /// empty write completes after the earlier ones), so a final frame is not lost.
        func channelInactive(context: ChannelHandlerContext) {
            let peer = self.peer
            peer.writeAndFlush(ByteBuffer()).whenComplete { _ in peer.close(promise: nil) }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }
}
