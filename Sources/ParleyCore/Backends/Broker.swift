import ServiceLifecycle

/// Carries room events to the hub of every instance, this one included.
///
/// Guarantees: events published by one instance for one room arrive at each instance in
/// publish order while the broker is healthy. Nothing more: messages from different publishers
/// may arrive in any order and a broker outage may lose events. The hub therefore orders
/// messages by `seq` and fills gaps from the `MessageStore`, which stays the source of truth.
/// Only messages that were durably stored are published.
public protocol Broker: Service {
    /// Sets the one receiver of incoming events. Called once, before `run`.
    func attach(_ receiver: any BrokerReceiver)
    func publish(_ event: ServerEvent) async throws
    /// Called when this instance gains (`true`) or loses (`false`) local members in `room`;
    /// a distributed broker subscribes only to rooms with local interest.
    func setInterest(room: String, _ interested: Bool) async throws
}

public protocol BrokerReceiver: Sendable {
    func receive(_ event: ServerEvent)
    /// Tells the receiver that the broker may have lost messages of `room` (a reconnection, a
    /// subscription that just became live, a dropped backlog): it compares what it delivered
    /// with the store and delivers whatever is missing, in order. This is how a message lost
    /// by pub/sub with no later message to reveal the gap still reaches every member.
    func resync(room: String) async
}
