import Logging
import ParleyCore
import ParleyRedis
import ServiceLifecycle
import Synchronization

/// Where the other instances of a cluster take Socket.IO polling requests for the sessions
/// they hold. An Engine.IO session lives on the instance that opened it (its `sid` starts
/// with that instance's id); a polling request that a load balancer without sticky sessions
/// sends elsewhere is forwarded there over HTTP.
protocol SocketIOPeers: Sendable {
    /// The base URL (`http://host:port`) of `instance`, nil when unknown.
    func url(of instance: String) async -> String?
}

/// The peers in Redis: `parley:socketio:peer:<instance>` holds each instance's base URL,
/// written once the server listens and refreshed every minute with a ten-minute life.
final class RedisSocketIOPeers: SocketIOPeers, Service {
    private let client: RedisClient
    private let instanceID: String
    private let logger: Logger
    private let advertised = Mutex<String?>(nil)
    private let listening = AsyncStream<Void>.makeStream()
    private let known = Mutex<[String: String]>([:])
    /// Instances looked up and not found, and when: a made-up `sid` costs Redis one lookup
    /// per instance name every `forgetUnknown`, however many requests carry it.
    private let unknown = Mutex<[String: ContinuousClock.Instant]>([:])
    static let forgetUnknown: Duration = .seconds(1)
    static let prefix = "parley:socketio:peer:"
    static let lifetime: Duration = .seconds(600)
    static let refresh: Duration = .seconds(60)

    init(client: RedisClient, instanceID: String, logger: Logger) {
        self.client = client
        self.instanceID = instanceID
        self.logger = logger
    }

    /// This instance's own base URL, known once it listens.
    func advertise(_ url: String) {
        advertised.withLock { $0 = url }
        listening.continuation.yield()
        listening.continuation.finish()
    }

    func run() async throws {
        await cancelWhenGracefulShutdown {
            for await _ in self.listening.stream { break }
            while !Task.isCancelled {
                if let url = self.advertised.withLock({ $0 }) {
                    do {
                        _ = try await self.client.send(
                            "SET", Self.prefix + self.instanceID, url, "PX", String(Self.lifetime.milliseconds)
                        )
                    } catch {
                        self.logger.warning("could not announce the Socket.IO forwarding address", metadata: ["error": "\(error)"])
                    }
                }
                try? await Task.sleep(for: Self.refresh)
            }
        }
        _ = try? await client.send("DEL", Self.prefix + instanceID)
    }

    func url(of instance: String) async -> String? {
        if let url = known.withLock({ $0[instance] }) { return url }
        let now = ContinuousClock.now
        if let missed = unknown.withLock({ $0[instance] }), now - missed < Self.forgetUnknown { return nil }
        guard let answer = try? await client.send("GET", Self.prefix + instance), let url = answer.string else {
            unknown.withLock { unknown in
                if unknown.count > 1_000 { unknown.removeAll() }
                unknown[instance] = now
            }
            return nil
        }
        // Instance ids are unique per run, so an address once known does not change.
        known.withLock { known in
            if known.count > 1_000 { known.removeAll() }
            known[instance] = url
        }
        return url
    }
}
