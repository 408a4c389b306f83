/// Which rooms this instance needs carried by Redis, as a state machine whose transitions
/// return what to do: `RedisBroker` applies the actions (start or cancel a subscription task)
/// outside its lock. Generic over the task handle so that it is tested without Redis.
///
/// Interest is counted, not flagged: a room that empties and fills again at once may see its
/// `true` and `false` arrive swapped, and the count still ends right. A subscription started
/// for one period of interest (its `generation`) is only kept if that period is still the
/// current one when the task is handed over.
struct RoomInterests<Handle: Equatable> {
    struct Interest {
        /// Calls with `true` minus calls with `false`.
        var count = 0
        /// A subscription is wanted (its task may not be handed over yet).
        var active = false
        var generation = 0
        var handle: Handle?
    }

    enum Action: Equatable {
        case none
        /// Start a subscription for this period of interest and hand its task to `started`.
        case subscribe(generation: Int)
        /// Interest ended: cancel this subscription.
        case cancel(Handle)
    }

    private(set) var rooms: [String: Interest] = [:]

    mutating func change(room: String, interested: Bool, generation: Int) -> Action {
        var interest = rooms[room, default: Interest()]
        interest.count += interested ? 1 : -1
        var action = Action.none
        if interest.count > 0, !interest.active {
            interest.active = true
            interest.generation = generation
            action = .subscribe(generation: generation)
        } else if interest.count <= 0, interest.active {
            interest.active = false
            if let handle = interest.handle { action = .cancel(handle) }
            interest.handle = nil
        }
        rooms[room] = interest.count == 0 && !interest.active ? nil : interest
        return action
    }

    /// The task of `generation`'s subscription. False: that period of interest is over (or a
    /// later one began); the caller cancels the task.
    mutating func started(room: String, generation: Int, handle: Handle) -> Bool {
        guard let interest = rooms[room], interest.active, interest.generation == generation, interest.handle == nil else { return false }
        rooms[room]!.handle = handle
        return true
    }

    /// The subscription could not be made; the next `true` starts another.
    mutating func failed(room: String, handle: Handle) {
        guard rooms[room]?.handle == handle else { return }
        rooms[room]!.handle = nil
        rooms[room]!.active = false
    }

    /// Rooms with a running subscription.
    var subscribed: [String] { rooms.filter { $0.value.handle != nil }.map(\.key) }

    /// Forgets everything (shutdown) and returns the subscriptions to cancel.
    mutating func removeAll() -> [Handle] {
        defer { rooms.removeAll() }
        return rooms.values.compactMap(\.handle)
    }
}
