/// Which local subscriptions want which channels and patterns. Decides what to SUBSCRIBE and
/// UNSUBSCRIBE on the server (a channel stays subscribed while any local subscription uses it)
/// and who receives each message. A plain value, tested on its own.
struct SubscriptionRegistry<Sink> {
    private struct Entry {
        var channels: [String]
        var patterns: [String]
        var sink: Sink
    }

    private var entries: [Int: Entry] = [:]
    private var channelUsers: [String: [Int]] = [:]
    private var patternUsers: [String: [Int]] = [:]

    var ids: [Int] { entries.keys.sorted() }
    var channels: [String] { channelUsers.keys.sorted() }
    var patterns: [String] { patternUsers.keys.sorted() }
    var sinks: [Sink] { ids.compactMap { entries[$0]?.sink } }
    var isEmpty: Bool { entries.isEmpty }

    func sink(for id: Int) -> Sink? { entries[id]?.sink }

    /// Channels and patterns are deduplicated.
    mutating func add(id: Int, channels: [String], patterns: [String], sink: Sink) {
        let channels = Self.unique(channels)
        let patterns = Self.unique(patterns)
        entries[id] = Entry(channels: channels, patterns: patterns, sink: sink)
        for channel in channels { channelUsers[channel, default: []].append(id) }
        for pattern in patterns { patternUsers[pattern, default: []].append(id) }
    }

    /// Removes a subscription; returns its sink and the channels and patterns nobody uses any more.
    mutating func remove(id: Int) -> (sink: Sink?, channels: [String], patterns: [String]) {
        guard let entry = entries.removeValue(forKey: id) else { return (nil, [], []) }
        let channels = Self.release(entry.channels, by: id, in: &channelUsers)
        let patterns = Self.release(entry.patterns, by: id, in: &patternUsers)
        return (entry.sink, channels, patterns)
    }

    /// Pattern messages go to the pattern's subscribers, the others to the channel's.
    func sinks(for message: RedisMessage) -> [Sink] {
        let users = message.pattern.map { patternUsers[$0] } ?? channelUsers[message.channel]
        return (users ?? []).compactMap { entries[$0]?.sink }
    }

    private static func release(_ names: [String], by id: Int, in users: inout [String: [Int]]) -> [String] {
        var unused: [String] = []
        for name in names {
            users[name]?.removeAll { $0 == id }
            if users[name]?.isEmpty == true {
                users[name] = nil
                unused.append(name)
            }
        }
        return unused
    }

    static func unique(_ names: [String]) -> [String] {
        var seen = Set<String>()
        return names.filter { seen.insert($0).inserted }
    }
}
