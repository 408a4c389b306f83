extension RedisConfiguration {
    /// The environment keys read by `init(environment:)`.
    public enum EnvironmentKey {
        /// Host name or address; when unset or empty there is no Redis configuration.
        public static let host = "REDIS_HOST"
        /// Port, default 6379.
        public static let port = "REDIS_PORT"
        /// Password for the `default` user, if any.
        public static let password = "REDIS_PASSWORD"
    }

    /// Reads `REDIS_HOST`, `REDIS_PORT` and `REDIS_PASSWORD`. Returns nil when `REDIS_HOST` is unset
    /// or empty; throws for a port that is not a number in 1...65535.
    /// Pass `ProcessInfo.processInfo.environment`.
    public init?(environment: [String: String]) throws {
        guard let host = environment[EnvironmentKey.host], !host.isEmpty else { return nil }
        var port = 6379
        if let text = environment[EnvironmentKey.port], !text.isEmpty {
            guard let value = Int(text), (1...65535).contains(value) else {
                throw RedisError(.invalidConfiguration, "\(EnvironmentKey.port) is not a port: '\(text)'")
            }
            port = value
        }
        let password = environment[EnvironmentKey.password].flatMap { $0.isEmpty ? nil : $0 }
        self.init(host: host, port: port, password: password)
    }
}
