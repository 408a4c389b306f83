import GRPCCore
import GRPCNIOTransportHTTP2
import ParleyGRPC

/// gRPC connections shared by `JoinChat` subscribers: one HTTP/2 connection carries up to
/// `streamsPerConnection` streams, as a microservice multiplexes its subscriptions.
final class GRPCConnections: Sendable {
    typealias Client = GRPCClient<HTTP2ClientTransport.Posix>
    static let streamsPerConnection = 100

    private let clients: [Client]
    private let tasks: [Task<Void, Never>]

    /// Opens enough connections to each `target` (`host:port`) for `streams` subscribers.
    init(targets: [String], streams: Int) throws {
        let perTarget = max(1, (streams / max(targets.count, 1) + Self.streamsPerConnection - 1) / Self.streamsPerConnection)
        var clients: [Client] = []
        for target in targets {
            let parts = target.split(separator: ":")
            guard parts.count == 2, let port = Int(parts[1]) else { throw BenchError("--grpc wants host:port, got \(target)") }
            for _ in 0..<perTarget {
                clients.append(GRPCClient(transport: try .http2NIOPosix(
                    target: .dns(host: String(parts[0]), port: port), transportSecurity: .plaintext
                )))
            }
        }
        self.clients = clients
        self.tasks = clients.map { client in Task { try? await client.runConnections() } }
    }

    /// The connection for subscriber `index`, spreading subscribers over targets first.
    func client(for index: Int) -> Client {
        clients[index % clients.count]
    }

    func close() {
        for client in clients { client.beginGracefulShutdown() }
        for task in tasks { task.cancel() }
    }
}

extension Subscriber {
    /// Subscribes with `JoinChat` instead of a WebSocket, with the same order and loss checks.
    func runGRPC(_ client: GRPCConnections.Client) async {
        let chat = Chat_V1_ChatService.Client(wrapping: client)
        let request = Chat_V1_JoinRequest.with {
            $0.roomID = room
            $0.userID = "sub-\(index)"
        }
        do {
            try await chat.joinChat(request: ClientRequest(message: request)) { response in
                for try await event in response.messages {
                    switch event.event {
                    case .message(let message):
                        let stamp = message.content.prefix { $0 != " " }
                        self.record(seq: Int(message.seq), sentAt: UInt64(stamp))
                    case .ack:
                        self.markJoined()
                    default:
                        break
                    }
                }
            }
        } catch {}
        markClosed()
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
