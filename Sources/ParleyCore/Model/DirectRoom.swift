/// Direct messages: the room of two users is named after them, `dm:<a>:<b>` with the two ids
/// in ascending byte order (`dm:alice:bob`), so either can open it by naming the other and
/// every instance derives the same room. Only those two may join it, read it, post to it or
/// see it listed: the name is no key (`Identity.mayAccess`). A user may have a DM with
/// themself (`dm:alice:alice`, notes to self).
public enum DirectRoom {
    public static let prefix = "dm:"

    /// The DM room of `a` and `b`.
    public static func name(_ a: String, _ b: String) -> String {
        a.utf8.lexicographicallyPrecedes(b.utf8) ? "\(prefix)\(a):\(b)" : "\(prefix)\(b):\(a)"
    }

    /// The two users of a DM room's name; nil unless it is one, spelled as `name` spells it.
    public static func participants(_ room: String) -> (String, String)? {
        guard room.hasPrefix(prefix) else { return nil }
        let parts = room.utf8.dropFirst(prefix.utf8.count).split(separator: UInt8(ascii: ":"), omittingEmptySubsequences: false)
        guard parts.count == 2, let a = String(parts[0]), let b = String(parts[1]), !a.isEmpty, !b.isEmpty,
            !b.utf8.lexicographicallyPrecedes(a.utf8)
        else { return nil }
        return (a, b)
    }

    /// The other user of a DM room, seen from `user`; nil when `user` is not in it.
    public static func partner(in room: String, of user: String) -> String? {
        guard let (a, b) = participants(room) else { return nil }
        return a == user ? b : b == user ? a : nil
    }
}
