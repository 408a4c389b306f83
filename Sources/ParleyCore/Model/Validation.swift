/// Name and content rules of the protocol, checked once at the engine's edge.
public enum Validation {
    /// A room name: up to `maxRoomLength` of `[A-Za-z0-9_.:-]`. Names starting with `dm:` are
    /// direct-message rooms and must be spelled as `DirectRoom.name` spells them, with two
    /// valid user ids (they may be longer than `maxRoomLength`).
    public static func isValidRoom(_ room: String, limits: Limits) -> Bool {
        if room.hasPrefix(DirectRoom.prefix) {
            guard let (a, b) = DirectRoom.participants(room) else { return false }
            return isValidUser(a, limits: limits) && isValidUser(b, limits: limits)
        }
        return isValidName(room, maxLength: limits.maxRoomLength, allowColon: true)
    }

    public static func isValidUser(_ user: String, limits: Limits) -> Bool {
        isValidName(user, maxLength: limits.maxUserLength, allowColon: false)
    }

    private static func isValidName(_ name: String, maxLength: Int, allowColon: Bool) -> Bool {
        let utf8 = name.utf8
        guard !utf8.isEmpty, utf8.count <= maxLength else { return false }
        for byte in utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "-"):
                continue
            case UInt8(ascii: ":") where allowColon:
                continue
            default:
                return false
            }
        }
        return true
    }

    public static func room(_ room: String, limits: Limits) throws(ParleyError) -> String {
        guard isValidRoom(room, limits: limits) else {
            if room.hasPrefix(DirectRoom.prefix) {
                throw .badRequest("invalid direct-message room: dm:<user>:<user>, the two user ids in ascending order")
            }
            throw .badRequest("invalid room name: 1 to \(limits.maxRoomLength) characters of A-Z a-z 0-9 _ . : -")
        }
        return room
    }

    public static func user(_ user: String, limits: Limits) throws(ParleyError) -> String {
        guard isValidUser(user, limits: limits) else {
            throw .badRequest("invalid user id: 1 to \(limits.maxUserLength) characters of A-Z a-z 0-9 _ . -")
        }
        return user
    }

    /// Trims surrounding whitespace and checks the length in code points.
    public static func content(_ content: String, limits: Limits) throws(ParleyError) -> String {
        let scalars = content.unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }),
            let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })
        else {
            throw .badRequest("content is empty")
        }
        let trimmed = scalars[first...last]
        var count = 0
        for scalar in trimmed {
            // U+0000 would be cut off by C-string storage: refuse it rather than store less.
            if scalar.value == 0 { throw .badRequest("content must not contain NUL characters") }
            count += 1
            if count > limits.maxContentLength {
                throw .badRequest("content is longer than \(limits.maxContentLength) characters")
            }
        }
        return String(trimmed)
    }

    /// A message id as a client names the message to change or answer: 1 to 64 bytes of
    /// `[A-Za-z0-9_.-]` (Parley's ids are 26-character ULIDs).
    public static func messageID(_ id: String, field: String = "id") throws(ParleyError) -> String {
        guard isValidName(id, maxLength: 64, allowColon: false) else {
            throw .badRequest("\(field) must be a message id")
        }
        return id
    }

    /// An emoji (or any short symbol): 1 to 32 bytes, without white space or control characters.
    public static func emoji(_ emoji: String) throws(ParleyError) -> String {
        guard !emoji.isEmpty, emoji.utf8.count <= 32,
            !emoji.unicodeScalars.contains(where: { $0.properties.isWhitespace || $0.properties.generalCategory == .control })
        else {
            throw .badRequest("emoji must be 1 to 32 bytes without spaces")
        }
        return emoji
    }

    public static func clientId(_ clientId: String?, limits: Limits) throws(ParleyError) -> String? {
        guard let clientId else { return nil }
        guard !clientId.isEmpty, clientId.utf8.count <= limits.maxClientIdLength else {
            throw .badRequest("clientId must be 1 to \(limits.maxClientIdLength) bytes")
        }
        return clientId
    }

    public static func historyLimit(_ limit: Int?, limits: Limits) throws(ParleyError) -> Int {
        guard let limit else { return limits.defaultHistoryLimit }
        guard (1...limits.maxHistoryLimit).contains(limit) else {
            throw .badRequest("limit must be between 1 and \(limits.maxHistoryLimit)")
        }
        return limit
    }

    public static func seq(_ seq: Int64?, field: String) throws(ParleyError) -> Int64? {
        guard let seq else { return nil }
        guard seq >= 0 else { throw .badRequest("\(field) must be a non-negative integer") }
        return seq
    }
}
