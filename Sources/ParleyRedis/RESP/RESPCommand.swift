import NIOCore

/// A command encoded once, at creation, as a RESP array of bulk strings: the form every Redis
/// version accepts. The same command can be sent many times without encoding it again.
public struct RESPCommand: Sendable, Hashable, CustomStringConvertible {
    /// The encoded bytes, ready for the wire.
    public let encoded: ByteBuffer
    /// The command name as given, for logs and for routing pub/sub confirmations.
    public let name: String
    /// How many bulk strings the command holds, its name included.
    public let count: Int

    /// `RESPCommand("SET", "key", payload, "EX", 60)`
    public init(_ name: String, _ arguments: any RESPArgument...) {
        self.init(name, arguments: arguments)
    }

    public init(_ name: String, arguments: [any RESPArgument]) {
        var buffer = ByteBufferAllocator().buffer(capacity: 16 + name.utf8.count + arguments.count * 16)
        buffer.writeInteger(UInt8(ascii: "*"))
        buffer.writeString(String(arguments.count + 1))
        buffer.writeCRLF()
        buffer.writeBulkString(name.utf8)
        for argument in arguments {
            argument.writeRESPBulkString(into: &buffer)
        }
        self.encoded = buffer
        self.name = name
        self.count = arguments.count + 1
    }

    public var description: String { "\(name) (\(count - 1) arguments)" }
}
