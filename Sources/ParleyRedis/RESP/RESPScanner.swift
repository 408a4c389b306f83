/// Finds where one RESP value ends, validating it on the way, without copying or building
/// anything. Returns nil while the value is incomplete, so a decoder can wait for more bytes;
/// throws `protocolError` as soon as the bytes cannot become a valid value or break a limit.
struct RESPScanner: Sendable {
    let limits: RESPLimits

    /// For values that were already validated: no limits left to enforce.
    static let unbounded = RESPScanner(
        limits: RESPLimits(
            maxDepth: .max,
            maxBulkLength: .max,
            maxAggregateCount: .max,
            maxLineLength: .max,
            maxBufferedBytes: .max
        )
    )

    /// The offset just past the value that starts at `start`, or nil if `bytes` ends before it.
    func scanValue(_ bytes: UnsafeRawBufferPointer, at start: Int, depth: Int) throws -> Int? {
        guard start < bytes.count else { return nil }
        guard let type = RESPTypeIdentifier(rawValue: bytes[start]) else {
            throw RedisError.protocolError("invalid RESP type byte \(Self.hex(bytes[start])) at offset \(start)")
        }
        guard let lineEnd = try findLineEnd(bytes, from: start + 1) else { return nil }
        let line = UnsafeRawBufferPointer(rebasing: bytes[(start + 1)..<lineEnd])
        let afterLine = lineEnd + 2

        switch type {
        case .simpleString, .simpleError:
            return afterLine
        case .integer:
            guard Self.parseInteger(line) != nil else { throw invalid("integer", line) }
            return afterLine
        case .bigNumber:
            guard Self.isBigNumber(line) else { throw invalid("big number", line) }
            return afterLine
        case .double:
            guard Self.parseDouble(line) != nil else { throw invalid("double", line) }
            return afterLine
        case .boolean:
            guard line.count == 1, line[0] == UInt8(ascii: "t") || line[0] == UInt8(ascii: "f") else {
                throw invalid("boolean", line)
            }
            return afterLine
        case .null:
            guard line.isEmpty else { throw invalid("null", line) }
            return afterLine
        case .bulkString, .bulkError, .verbatimString:
            return try scanBlob(type, bytes, line: line, afterLine: afterLine)
        case .array, .set, .push, .map, .attribute:
            return try scanAggregate(type, bytes, line: line, afterLine: afterLine, depth: depth)
        }
    }

    private func scanBlob(
        _ type: RESPTypeIdentifier,
        _ bytes: UnsafeRawBufferPointer,
        line: UnsafeRawBufferPointer,
        afterLine: Int
    ) throws -> Int? {
        guard let length = Self.parseInteger(line) else { throw invalid("length", line) }
        if length == -1, type == .bulkString { return afterLine }  // RESP2 null bulk string
        guard length >= 0 else { throw RedisError.protocolError("invalid negative length \(length)") }
        guard length <= limits.maxBulkLength else {
            throw RedisError.protocolError("bulk length \(length) exceeds the limit of \(limits.maxBulkLength)")
        }
        let end = afterLine + Int(length)
        guard bytes.count >= end + 2 else { return nil }
        guard bytes[end] == Self.cr, bytes[end + 1] == Self.lf else {
            throw RedisError.protocolError("bulk data not followed by CRLF")
        }
        if type == .verbatimString, length < 4 || bytes[afterLine + 3] != UInt8(ascii: ":") {
            throw RedisError.protocolError("verbatim string without a format prefix")
        }
        return end + 2
    }

    private func scanAggregate(
        _ type: RESPTypeIdentifier,
        _ bytes: UnsafeRawBufferPointer,
        line: UnsafeRawBufferPointer,
        afterLine: Int,
        depth: Int
    ) throws -> Int? {
        guard let count = Self.parseInteger(line) else { throw invalid("count", line) }
        if count == -1, type == .array { return afterLine }  // RESP2 null array
        guard count >= 0 else { throw RedisError.protocolError("invalid negative count \(count)") }
        guard count <= limits.maxAggregateCount else {
            throw RedisError.protocolError("aggregate of \(count) elements exceeds the limit of \(limits.maxAggregateCount)")
        }
        guard depth < limits.maxDepth else {
            throw RedisError.protocolError("aggregates nested deeper than the limit of \(limits.maxDepth)")
        }
        var offset = afterLine
        for _ in 0..<(Int(count) * (type.valuesPerElement ?? 1)) {
            guard let next = try scanValue(bytes, at: offset, depth: depth + 1) else { return nil }
            offset = next
        }
        // An attribute annotates the value that follows it; both form one token. The depth grows
        // so that a run of attributes cannot recurse without bound.
        if type == .attribute { return try scanValue(bytes, at: offset, depth: depth + 1) }
        return offset
    }

    /// The index of the CR that ends the line starting at `from`.
    private func findLineEnd(_ bytes: UnsafeRawBufferPointer, from: Int) throws -> Int? {
        let searchEnd = bytes.count - from > limits.maxLineLength ? from + limits.maxLineLength + 1 : bytes.count
        var index = from
        while index < searchEnd {
            let byte = bytes[index]
            if byte == Self.cr {
                guard index + 1 < bytes.count else { return nil }
                guard bytes[index + 1] == Self.lf else { throw RedisError.protocolError("CR not followed by LF") }
                return index
            }
            if byte == Self.lf { throw RedisError.protocolError("LF without CR") }
            index += 1
        }
        if bytes.count - from > limits.maxLineLength {
            throw RedisError.protocolError("line longer than the limit of \(limits.maxLineLength) bytes")
        }
        return nil
    }

    private func invalid(_ what: String, _ line: UnsafeRawBufferPointer) -> RedisError {
        let text = String(decoding: line.prefix(32), as: UTF8.self)
        return RedisError.protocolError("invalid \(what) '\(text)'")
    }

    static let cr = UInt8(ascii: "\r")
    static let lf = UInt8(ascii: "\n")

    /// A decimal Int64 with an optional sign; nil for anything else, including overflow.
    static func parseInteger(_ line: UnsafeRawBufferPointer) -> Int64? {
        var index = 0
        var negative = false
        if let first = line.first, first == UInt8(ascii: "-") || first == UInt8(ascii: "+") {
            negative = first == UInt8(ascii: "-")
            index = 1
        }
        guard index < line.count, line.count - index <= 19 else { return nil }
        var value: Int64 = 0  // accumulated negatively so that Int64.min parses
        while index < line.count {
            let digit = line[index] &- UInt8(ascii: "0")
            guard digit < 10 else { return nil }
            let (shifted, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (next, overflow2) = shifted.subtractingReportingOverflow(Int64(digit))
            guard !overflow1, !overflow2 else { return nil }
            value = next
            index += 1
        }
        if negative { return value }
        return value == .min ? nil : -value
    }

    static func parseDouble(_ line: UnsafeRawBufferPointer) -> Double? {
        guard !line.isEmpty, line.count <= 64 else { return nil }
        return Double(String(decoding: line, as: UTF8.self))
    }

    static func isBigNumber(_ line: UnsafeRawBufferPointer) -> Bool {
        let digits = line.first == UInt8(ascii: "-") || line.first == UInt8(ascii: "+") ? line.dropFirst() : line[...]
        return !digits.isEmpty && digits.allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
    }

    private static func hex(_ byte: UInt8) -> String {
        let digits = Array("0123456789ABCDEF")
        return "0x\(digits[Int(byte >> 4)])\(digits[Int(byte & 0xF)])"
    }
}
