/// An error with a stable, spec'd code; every transport maps it once to its own wire form.
public struct ParleyError: Error, Sendable, Hashable, CustomStringConvertible {
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        private enum Wrapped: String, Sendable, Hashable {
            case badRequest = "bad_request"
            case unauthorized
            case forbidden
            case notFound = "not_found"
            case tooLarge = "too_large"
            case rateLimited = "rate_limited"
            case unavailable
            case `internal`
        }

        private let wrapped: Wrapped
        private init(_ wrapped: Wrapped) { self.wrapped = wrapped }

        public static let badRequest = Code(.badRequest)
        public static let unauthorized = Code(.unauthorized)
        public static let forbidden = Code(.forbidden)
        public static let notFound = Code(.notFound)
        public static let tooLarge = Code(.tooLarge)
        public static let rateLimited = Code(.rateLimited)
        public static let unavailable = Code(.unavailable)
        public static let `internal` = Code(.internal)

        /// The wire name, e.g. `bad_request`.
        public var name: String { wrapped.rawValue }

        /// The code a protocol names (`bad_request`, ...); nil for a name it does not have.
        public init?(name: String) {
            guard let wrapped = Wrapped(rawValue: name) else { return nil }
            self.wrapped = wrapped
        }
        public var description: String { wrapped.rawValue }
    }

    public var code: Code
    public var message: String
    /// For `rate_limited`: how long the client should wait.
    public var retryAfterMs: Int?

    public init(_ code: Code, _ message: String, retryAfterMs: Int? = nil) {
        self.code = code
        self.message = message
        self.retryAfterMs = retryAfterMs
    }

    public var description: String { "\(code.name): \(message)" }

    public static func badRequest(_ message: String) -> ParleyError { ParleyError(.badRequest, message) }
    public static func unavailable(_ message: String) -> ParleyError { ParleyError(.unavailable, message) }
}
