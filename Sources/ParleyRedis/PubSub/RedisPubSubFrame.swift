/// A pub/sub frame: a RESP3 push, or a RESP2 array while the connection is subscribed.
enum RedisPubSubFrame: Sendable, Hashable {
    case message(RedisMessage)
    /// A (P|S)(UN)SUBSCRIBE confirmation; `count` is how many subscriptions the connection now has.
    case confirmation(count: Int)
    /// Any other push, such as client-side caching's `invalidate`: not ours to handle.
    case otherPush

    /// Nil when `token` is an ordinary reply.
    init?(_ token: RESPToken, arraysArePubSub: Bool) {
        let isPush: Bool
        let elements: [RESPToken]
        switch token.value {
        case .push(let items):
            isPush = true
            elements = Array(items)
        case .array(let items) where arraysArePubSub:
            isPush = false
            elements = Array(items)
        default:
            return nil
        }
        switch elements.first?.string?.lowercased() {
        case "message", "smessage":
            guard elements.count == 3, let channel = elements[1].string, let payload = elements[2].bytes else {
                return nil
            }
            self = .message(RedisMessage(channel: channel, payload: payload))
        case "pmessage":
            guard elements.count == 4, let pattern = elements[1].string, let channel = elements[2].string,
                let payload = elements[3].bytes
            else { return nil }
            self = .message(RedisMessage(channel: channel, pattern: pattern, payload: payload))
        case "subscribe", "unsubscribe", "psubscribe", "punsubscribe", "ssubscribe", "sunsubscribe":
            guard elements.count == 3, let count = elements[2].int else { return nil }
            self = .confirmation(count: Int(count))
        default:
            guard isPush else { return nil }
            self = .otherPush
        }
    }
}
