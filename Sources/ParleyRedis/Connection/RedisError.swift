/// Every error the Redis client throws: a stable `code` to switch on and a human message.
public struct RedisError: Error, Sendable, Hashable, CustomStringConvertible {
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        private enum Wrapped: String, Sendable, Hashable {
            case connectionFailed = "connection_failed"
            case connectionClosed = "connection_closed"
            case unavailable
            case timeout
            case cancelled
            case protocolError = "protocol_error"
            case serverError = "server_error"
            case authenticationFailed = "authentication_failed"
            case invalidConfiguration = "invalid_configuration"
        }

        private let wrapped: Wrapped
        private init(_ wrapped: Wrapped) { self.wrapped = wrapped }

        /// The server could not be reached (refused, unresolvable, connect timeout).
        public static let connectionFailed = Code(.connectionFailed)
        /// The connection closed while the command was queued or in flight.
        public static let connectionClosed = Code(.connectionClosed)
        /// A reconnecting client had no connection in time, or was shut down.
        public static let unavailable = Code(.unavailable)
        /// No reply within the command timeout. The connection stays usable: the late reply is discarded.
        public static let timeout = Code(.timeout)
        /// The waiting task was cancelled. The late reply is discarded.
        public static let cancelled = Code(.cancelled)
        /// The server sent bytes that are not valid RESP, or broke a `RESPLimits` bound.
        /// The connection is closed.
        public static let protocolError = Code(.protocolError)
        /// The server answered with an error reply (`-ERR ...`, `!...`); see `serverErrorPrefix`.
        public static let serverError = Code(.serverError)
        /// AUTH (or HELLO ... AUTH) was refused.
        public static let authenticationFailed = Code(.authenticationFailed)
        /// A URL or setting could not be used.
        public static let invalidConfiguration = Code(.invalidConfiguration)

        /// The stable name, e.g. `protocol_error`.
        public var name: String { wrapped.rawValue }
        public var description: String { wrapped.rawValue }
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// For server errors, the upper-case first word Redis uses as its own code (`ERR`, `WRONGTYPE`,
    /// `NOAUTH`, `WRONGPASS`, `NOPROTO`, ...).
    public var serverErrorPrefix: String? {
        guard code == .serverError else { return nil }
        let word = message.prefix { $0 != " " }
        return !word.isEmpty && word.allSatisfy({ $0.isUppercase || $0 == "_" }) ? String(word) : nil
    }

    public var description: String { "\(code.name): \(message)" }

    static func protocolError(_ message: String) -> RedisError { RedisError(.protocolError, message) }
    static func connectionClosed(_ message: String = "connection closed") -> RedisError {
        RedisError(.connectionClosed, message)
    }
}
