import ServiceLifecycle
import Synchronization

/// In-process broker for a single instance: hands each event straight to the hub.
public final class MemoryBroker: Broker {
    private let receiver = Mutex<(any BrokerReceiver)?>(nil)

    public init() {}

    public func run() async throws {
        try? await gracefulShutdown()
    }

    public func attach(_ receiver: any BrokerReceiver) {
        self.receiver.withLock { $0 = receiver }
    }

    public func publish(_ event: ServerEvent) async throws {
        receiver.withLock { $0 }?.receive(event)
    }

    public func setInterest(room: String, _ interested: Bool) async throws {}
}
