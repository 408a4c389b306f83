/// Ephemeral state a member may change faster than it is worth telling a room (typing, read
/// positions): the first change is sent at once, later ones within `window` of the last sent
/// wait, and only the newest waiting state is sent when the window has passed, if it differs
/// from what the room last heard. A flood of changes becomes at most one event per window.
///
/// A value type driven by explicit instants, so that it is tested without a clock.
struct Coalescer<Key: Hashable, Value: Equatable> {
    struct Entry {
        var sentAt: ContinuousClock.Instant
        var sent: Value
        var pending: Value?
    }

    let window: Duration
    private(set) var entries: [Key: Entry] = [:]

    init(window: Duration) {
        self.window = window
    }

    /// Offers a new state: returns it when it is to be sent now, nil when it waits (or
    /// repeats what was sent). `force` sends it now whatever the window (a member leaving).
    mutating func offer(_ key: Key, _ value: Value, now: ContinuousClock.Instant, force: Bool = false) -> Value? {
        guard var entry = entries[key] else {
            entries[key] = Entry(sentAt: now, sent: value, pending: nil)
            return value
        }
        guard force || now - entry.sentAt >= window else {
            entry.pending = value
            entries[key] = entry
            return nil
        }
        entry.pending = nil
        if value == entry.sent, !force {
            entries[key] = entry
            return nil
        }
        entry.sent = value
        entry.sentAt = now
        entries[key] = entry
        return value
    }

    /// The waiting states whose window has passed, to send now; entries quiet for a whole
    /// window are forgotten.
    mutating func due(now: ContinuousClock.Instant) -> [(key: Key, value: Value)] {
        var due: [(key: Key, value: Value)] = []
        for key in Array(entries.keys) {
            guard var entry = entries[key], now - entry.sentAt >= window else { continue }
            if let pending = entry.pending, pending != entry.sent {
                entry.sent = pending
                entry.sentAt = now
                entry.pending = nil
                entries[key] = entry
                due.append((key, pending))
            } else {
                entries[key] = nil
            }
        }
        return due
    }

    /// Forgets a key (its member left).
    mutating func remove(_ key: Key) {
        entries[key] = nil
    }
}
