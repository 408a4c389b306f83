import Logging
import NIOCore
import ParleyCore
import ServiceLifecycle
import Synchronization

/// Carries room events between instances over Redis pub/sub, one channel per room
/// (`parley:room:<room>`), subscribed only while this instance has members in the room.
///
/// Guarantees, on top of `Broker`'s: whatever pub/sub loses is recovered from the store.
/// Every time a room's subscription becomes live (first subscribe, resubscription after a
/// reconnect) or its backlog overflowed, the hub is asked to `resync` the room against the
/// store; a low-rate periodic resync of every subscribed room also catches a message whose
/// publish failed while this instance's own subscription stayed up. A failed publish of a
/// message is retried once on the next connection.
///
/// Events are encoded with `BrokerCodec`. No event is addressed to a single user yet, so the
/// per-user channel (`parley:user:<id>`) of the design is not used.
public final class RedisBroker: Broker {
    public struct Configuration: Sendable {
        /// Prefix of every channel name.
        public var channelPrefix = "parley:"
        /// How often every subscribed room is checked against the store; nil never.
        public var resyncInterval: Duration? = .seconds(10)
        /// How long a publish may wait (for a connection included): while Redis is away a
        /// publisher must not stall, the store already holds the message.
        public var publishTimeout: Duration = .seconds(1)

        public init() {}
    }

    private let client: RedisClient
    private let subscriber: RedisSubscriber
    private let configuration: Configuration
    private let logger: Logger
    private let receiver = Mutex<(any BrokerReceiver)?>(nil)
    private let interests = Mutex(RoomInterests<Task<Void, Never>>())
    private let generations = Atomic<Int>(0)

    /// `client` and `subscriber` run as services of their own, before this one.
    public init(client: RedisClient, subscriber: RedisSubscriber, configuration: Configuration = .init(), logger: Logger) {
        self.client = client
        self.subscriber = subscriber
        self.configuration = configuration
        self.logger = logger
    }

    public func attach(_ receiver: any BrokerReceiver) {
        self.receiver.withLock { $0 = receiver }
    }

    public func run() async throws {
        try? await cancelWhenGracefulShutdown {
            while true {
                guard let interval = self.configuration.resyncInterval else {
                    try await Task.sleep(for: .seconds(3600))
                    continue
                }
                try await Task.sleep(for: interval)
                for room in self.subscribedRooms {
                    await self.receiver.withLock { $0 }?.resync(room: room)
                }
            }
        }
        let tasks = interests.withLock { $0.removeAll() }
        for task in tasks { task.cancel() }
        for task in tasks { await task.value }
    }

    public var subscribedRooms: [String] {
        interests.withLock { $0.subscribed }
    }

    public func channel(room: String) -> String { configuration.channelPrefix + "room:" + room }

    public func publish(_ event: ServerEvent) async throws {
        let command = RESPCommand("PUBLISH", channel(room: event.room), BrokerCodec.encode(event))
        do {
            _ = try await client.send(command, timeout: configuration.publishTimeout)
        } catch let error as RedisError where error.code == .connectionClosed {
            // It may not have reached Redis: send it again on the next connection. A
            // duplicate is harmless, the hub drops a seq it already delivered.
            guard case .message = event else { throw error }
            _ = try await client.send(command, timeout: configuration.publishTimeout)
        }
    }

    /// Counts interest up and down rather than trusting the order of the calls: a room that
    /// empties and fills again at once may see its `true` and `false` arrive swapped.
    public func setInterest(room: String, _ interested: Bool) async throws {
        let generation = generations.wrappingAdd(1, ordering: .relaxed).newValue
        switch interests.withLock({ $0.change(room: room, interested: interested, generation: generation) }) {
        case .none: break
        case .cancel(let task): task.cancel()
        case .subscribe(let generation): try await subscribe(room: room, generation: generation)
        }
    }

    /// Starts the room's subscription task and waits until it is live (or pending a
    /// connection, which then resyncs the room once it is live).
    private func subscribe(room: String, generation: Int) async throws {
        let ready = ReadySignal()
        let task = Task {
            do {
                try await subscriber.subscribe(channels: [channel(room: room)]) { subscription in
                    ready.signal(nil)
                    // Messages stored between the hub reading the room's last seq and this
                    // subscription going live reach nobody otherwise.
                    await receiver.withLock { $0 }?.resync(room: room)
                    for await event in subscription {
                        switch event {
                        case .message(let message):
                            if let decoded = BrokerCodec.decode(message.payload) {
                                receiver.withLock { $0 }?.receive(decoded)
                            } else {
                                logger.warning("undecodable broker event", metadata: ["channel": "\(message.channel)"])
                            }
                        case .reconnected, .dropped:
                            await receiver.withLock { $0 }?.resync(room: room)
                        }
                    }
                }
            } catch {
                logger.warning("room subscription failed", metadata: ["room": "\(room)", "error": "\(error)"])
                ready.signal(error)
            }
        }
        let kept = interests.withLock { $0.started(room: room, generation: generation, handle: task) }
        guard kept else {
            // Interest ended (or restarted) meanwhile.
            task.cancel()
            return
        }
        if let error = await ready.wait() {
            interests.withLock { $0.failed(room: room, handle: task) }
            throw error
        }
    }

    /// Whether Redis answers a PING within `timeout` (for readiness and metrics).
    public func isReachable(timeout: Duration = .seconds(1)) async -> Bool {
        (try? await client.send(RESPCommand("PING"), timeout: timeout)) != nil
    }
}

/// A one-shot signal: the first `signal` wins and wakes `wait`.
final class ReadySignal: Sendable {
    private struct State {
        var result: (any Error)??
        var waiter: CheckedContinuation<(any Error)?, Never>?
    }

    private let state = Mutex(State())

    func signal(_ error: (any Error)?) {
        let waiter = state.withLock { state -> CheckedContinuation<(any Error)?, Never>? in
            guard state.result == nil else { return nil }
            state.result = .some(error)
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: error)
    }

    func wait() async -> (any Error)? {
        await withCheckedContinuation { continuation in
            let ready = state.withLock { state -> (any Error)?? in
                if let result = state.result { return .some(result) }
                state.waiter = continuation
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }
}
