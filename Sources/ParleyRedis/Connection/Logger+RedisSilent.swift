import Logging

extension Logger {
    /// Discards everything: the library's default, so it stays silent unless given a logger.
    public static let redisSilent = Logger(label: "parley.redis", factory: { _ in SwiftLogNoOpLogHandler() })
}
