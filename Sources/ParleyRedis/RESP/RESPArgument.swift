import NIOCore

/// A value that can be sent as one argument of a command: it is written as a bulk string.
public protocol RESPArgument {
    func writeRESPBulkString(into buffer: inout ByteBuffer)
}

extension ByteBuffer {
    /// Writes `$<length>\r\n<bytes>\r\n`.
    mutating func writeBulkString(_ bytes: some Collection<UInt8>) {
        writeBulkLength(bytes.count)
        writeBytes(bytes)
        writeCRLF()
    }

    mutating func writeBulkLength(_ length: Int) {
        writeInteger(UInt8(ascii: "$"))
        writeString(String(length))
        writeCRLF()
    }

    mutating func writeCRLF() {
        writeInteger(UInt16(0x0D0A))
    }
}

extension String: RESPArgument {
    public func writeRESPBulkString(into buffer: inout ByteBuffer) {
        buffer.writeBulkString(utf8)
    }
}

extension Substring: RESPArgument {
    public func writeRESPBulkString(into buffer: inout ByteBuffer) {
        buffer.writeBulkString(utf8)
    }
}

extension ByteBuffer: RESPArgument {
    public func writeRESPBulkString(into buffer: inout ByteBuffer) {
        buffer.writeBulkLength(readableBytes)
        buffer.writeImmutableBuffer(self)
        buffer.writeCRLF()
    }
}

extension Array: RESPArgument where Element == UInt8 {
    public func writeRESPBulkString(into buffer: inout ByteBuffer) {
        buffer.writeBulkString(self)
    }
}

extension Int: RESPArgument {
    public func writeRESPBulkString(into buffer: inout ByteBuffer) {
        String(self).writeRESPBulkString(into: &buffer)
    }
}

extension Int64: RESPArgument {
    public func writeRESPBulkString(into buffer: inout ByteBuffer) {
        String(self).writeRESPBulkString(into: &buffer)
    }
}

extension Double: RESPArgument {
    public func writeRESPBulkString(into buffer: inout ByteBuffer) {
        String(self).writeRESPBulkString(into: &buffer)
    }
}
