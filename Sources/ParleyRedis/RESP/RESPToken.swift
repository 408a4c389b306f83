import NIOCore

/// One complete, validated RESP2 or RESP3 value.
///
/// A token keeps a slice of the bytes it was read from (no copy, no tree of objects); `value`
/// and the aggregate views parse those bytes lazily, and only ever bytes that were validated.
public struct RESPToken: Sendable, Hashable {
    /// The value's bytes on the wire, including any leading attribute.
    public let base: ByteBuffer

    init(validated: ByteBuffer) {
        self.base = validated
    }

    /// Reads one value from the front of `buffer`; nil (and `buffer` untouched) if it is incomplete.
    /// Throws a `protocolError` for bytes that can never form a valid value or that break `limits`.
    public init?(consuming buffer: inout ByteBuffer, limits: RESPLimits = RESPLimits()) throws {
        let scanner = RESPScanner(limits: limits)
        let end = try buffer.withUnsafeReadableBytes { try scanner.scanValue($0, at: 0, depth: 0) }
        guard let end, let slice = buffer.readSlice(length: end) else { return nil }
        self.base = slice
    }

    /// A decoded view of a token. RESP2's null bulk string and null array and RESP3's null are all
    /// `.null`; a RESP3 attribute is not a value of its own but annotates one: see `attributes`.
    public enum Value: Sendable, Hashable {
        case simpleString(ByteBuffer)
        case simpleError(ByteBuffer)
        case integer(Int64)
        case bulkString(ByteBuffer)
        case null
        case boolean(Bool)
        case double(Double)
        /// The decimal digits, with an optional sign.
        case bigNumber(ByteBuffer)
        case bulkError(ByteBuffer)
        /// `format` is the three-byte encoding hint, such as `txt` or `mkd`.
        case verbatimString(format: ByteBuffer, text: ByteBuffer)
        case array(Array)
        case map(Map)
        case set(Array)
        case push(Array)
    }

    /// The elements of an array, set or push, parsed as they are iterated.
    public struct Array: Sequence, Sendable, Hashable {
        public let count: Int
        let elements: ByteBuffer

        public func makeIterator() -> Iterator { Iterator(remaining: count, buffer: elements) }

        public struct Iterator: IteratorProtocol {
            var remaining: Int
            var buffer: ByteBuffer

            public mutating func next() -> RESPToken? {
                guard remaining > 0, let token = RESPToken.readValidated(&buffer) else { return nil }
                remaining -= 1
                return token
            }
        }
    }

    /// The key-value pairs of a map or attribute, parsed as they are iterated.
    public struct Map: Sequence, Sendable, Hashable {
        public let count: Int
        let elements: ByteBuffer

        public func makeIterator() -> Iterator {
            Iterator(values: Array(count: count * 2, elements: elements).makeIterator())
        }

        public struct Iterator: IteratorProtocol {
            var values: Array.Iterator

            public mutating func next() -> (key: RESPToken, value: RESPToken)? {
                guard let key = values.next(), let value = values.next() else { return nil }
                return (key, value)
            }
        }
    }

    /// The attribute map that preceded this value on the wire, if any.
    public var attributes: Map? {
        var bytes = base
        guard bytes.readableBytes > 0, bytes.readableBytesView.first == RESPTypeIdentifier.attribute.rawValue else {
            return nil
        }
        let header = Self.readHeader(&bytes)
        return Map(count: Int(header.number), elements: bytes)
    }

    public var value: Value {
        var bytes = Self.valueBytes(of: base)
        let header = Self.readHeader(&bytes)
        switch header.type {
        case .simpleString: return .simpleString(header.line)
        case .simpleError: return .simpleError(header.line)
        case .integer: return .integer(header.number)
        case .bigNumber: return .bigNumber(header.line)
        case .null: return .null
        case .boolean: return .boolean(header.line.readableBytesView.first == UInt8(ascii: "t"))
        case .double:
            return .double(Double(String(buffer: header.line)) ?? .nan)
        case .bulkString, .bulkError, .verbatimString:
            guard header.number >= 0, let blob = bytes.readSlice(length: Int(header.number)) else { return .null }
            if header.type == .bulkString { return .bulkString(blob) }
            if header.type == .bulkError { return .bulkError(blob) }
            return .verbatimString(
                format: blob.getSlice(at: blob.readerIndex, length: 3) ?? blob,
                text: blob.getSlice(at: blob.readerIndex + 4, length: blob.readableBytes - 4) ?? blob
            )
        case .array, .set, .push:
            guard header.number >= 0 else { return .null }
            let elements = Array(count: Int(header.number), elements: bytes)
            if header.type == .array { return .array(elements) }
            return header.type == .set ? .set(elements) : .push(elements)
        case .map, .attribute:
            return .map(Map(count: Int(header.number), elements: bytes))
        }
    }

    /// Reads one already validated value.
    static func readValidated(_ buffer: inout ByteBuffer) -> RESPToken? {
        let end = try? buffer.withUnsafeReadableBytes { try RESPScanner.unbounded.scanValue($0, at: 0, depth: 0) }
        guard let end, let slice = buffer.readSlice(length: end) else { return nil }
        return RESPToken(validated: slice)
    }

    /// `base` without its leading attribute: for an attribute, the bytes after its pairs.
    private static func valueBytes(of base: ByteBuffer) -> ByteBuffer {
        var bytes = base
        guard bytes.readableBytesView.first == RESPTypeIdentifier.attribute.rawValue else { return bytes }
        let header = readHeader(&bytes)
        var attribute = bytes
        for _ in 0..<(Int(header.number) * 2) { _ = readValidated(&attribute) }
        let valueStart = attribute.readerIndex - bytes.readerIndex
        bytes.moveReaderIndex(forwardBy: valueStart)
        return valueBytes(of: bytes)
    }

    /// Reads the type byte and the first line; `number` is the line as an integer, or 0.
    private static func readHeader(
        _ bytes: inout ByteBuffer
    ) -> (type: RESPTypeIdentifier, line: ByteBuffer, number: Int64) {
        let type = bytes.readInteger(as: UInt8.self).flatMap(RESPTypeIdentifier.init(rawValue:)) ?? .null
        let length = bytes.readableBytesView.firstIndex(of: RESPScanner.cr).map { $0 - bytes.readerIndex } ?? 0
        let line = bytes.readSlice(length: length) ?? ByteBuffer()
        bytes.moveReaderIndex(forwardBy: min(2, bytes.readableBytes))
        let number = line.withUnsafeReadableBytes { RESPScanner.parseInteger($0) } ?? 0
        return (type, line, number)
    }
}
