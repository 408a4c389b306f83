/// `@user` mentions in a message's content, and who a new message notifies.
public enum Mentions {
    /// Most users one message notifies by mention: a message naming hundreds of users is
    /// not a way to reach every one of them.
    public static let maxNotified = 20

    /// The distinct users `content` mentions, in order: `@` then a user id, not preceded by a
    /// letter, digit or one of `_ . -` (so `a@b.c` mentions nobody); a `.` that ends the id is
    /// punctuation (`thanks @bob.`).
    public static func users(in content: String, limits: Limits) -> [String] {
        var found: [String] = []
        let bytes = Array(content.utf8)
        var index = 0
        while index < bytes.count {
            defer { index += 1 }
            guard bytes[index] == UInt8(ascii: "@") else { continue }
            if index > 0, isUserByte(bytes[index - 1]) { continue }
            var end = index + 1
            while end < bytes.count, isUserByte(bytes[end]) { end += 1 }
            while end > index + 1, bytes[end - 1] == UInt8(ascii: ".") { end -= 1 }
            guard end > index + 1 else { continue }
            let user = String(decoding: bytes[(index + 1)..<end], as: UTF8.self)
            if Validation.isValidUser(user, limits: limits), !found.contains(user) { found.append(user) }
            index = end - 1
        }
        return found
    }

    private static func isUserByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
            UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "-"):
            true
        default:
            false
        }
    }

    /// Who a newly stored message notifies, and why: the other user of a direct-message room
    /// (`dm`), and the users it mentions (`mention`), never its author. In a DM room only its
    /// two users can be notified.
    public static func notifications(for message: Message, limits: Limits) -> [(user: String, kind: NotificationKind)] {
        if let partner = DirectRoom.partner(in: message.room, of: message.user) {
            return partner == message.user ? [] : [(partner, .direct)]
        }
        return users(in: message.content, limits: limits)
            .filter { $0 != message.user }
            .prefix(maxNotified)
            .map { ($0, .mention) }
    }
}
