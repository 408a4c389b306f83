import NIOCore

extension RESPToken {
    /// Text of a simple string, bulk string, verbatim string or big number.
    public var string: String? {
        switch value {
        case .simpleString(let bytes), .bulkString(let bytes), .bigNumber(let bytes): String(buffer: bytes)
        case .verbatimString(_, let text): String(buffer: text)
        default: nil
        }
    }

    /// The bytes of a bulk, simple or verbatim string.
    public var bytes: ByteBuffer? {
        switch value {
        case .simpleString(let bytes), .bulkString(let bytes): bytes
        case .verbatimString(_, let text): text
        default: nil
        }
    }

    /// An integer reply, or a string reply that holds a decimal integer.
    public var int: Int64? {
        if case .integer(let number) = value { return number }
        guard let bytes else { return nil }
        return bytes.withUnsafeReadableBytes { RESPScanner.parseInteger($0) }
    }

    public var isNull: Bool { value == .null }

    /// The message of a simple or bulk error reply.
    public var errorMessage: String? {
        switch value {
        case .simpleError(let bytes), .bulkError(let bytes): String(buffer: bytes)
        default: nil
        }
    }

    /// The elements of an array, set or push.
    public var array: [RESPToken]? {
        switch value {
        case .array(let elements), .set(let elements), .push(let elements): Swift.Array(elements)
        default: nil
        }
    }

    /// A map reply (RESP3) or a flat array of key-value pairs (RESP2), such as HGETALL's, as strings.
    public var stringMap: [String: String]? {
        switch value {
        case .map(let map):
            var result: [String: String] = [:]
            for (key, value) in map {
                guard let key = key.string, let value = value.string else { return nil }
                result[key] = value
            }
            return result
        case .array(let elements):
            guard elements.count % 2 == 0 else { return nil }
            var result: [String: String] = [:]
            var iterator = elements.makeIterator()
            while let key = iterator.next() {
                guard let key = key.string, let value = iterator.next()?.string else { return nil }
                result[key] = value
            }
            return result
        default:
            return nil
        }
    }
}

extension RESPToken: CustomStringConvertible {
    /// A readable rendering for logs and test failures, e.g. `["subscribe", "a", 1]`.
    public var description: String {
        switch value {
        case .simpleString(let bytes): "+\(String(buffer: bytes))"
        case .simpleError(let bytes), .bulkError(let bytes): "-\(String(buffer: bytes))"
        case .integer(let number): "\(number)"
        case .bulkString(let bytes): "\"\(String(buffer: bytes))\""
        case .null: "null"
        case .boolean(let flag): "\(flag)"
        case .double(let number): "\(number)"
        case .bigNumber(let digits): "(\(String(buffer: digits))"
        case .verbatimString(let format, let text): "\(String(buffer: format)):\"\(String(buffer: text))\""
        case .array(let elements): "[\(elements.map(\.description).joined(separator: ", "))]"
        case .set(let elements): "~[\(elements.map(\.description).joined(separator: ", "))]"
        case .push(let elements): ">[\(elements.map(\.description).joined(separator: ", "))]"
        case .map(let map): "{\(map.map { "\($0.key): \($0.value)" }.joined(separator: ", "))}"
        }
    }
}
