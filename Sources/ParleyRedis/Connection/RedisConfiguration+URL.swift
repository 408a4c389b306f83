import ParleyCore

extension RedisConfiguration {
    /// Parses `redis://[[user]:password@]host[:port][/db]` (`ServiceURL`).
    ///
    /// User and password may be percent-encoded. A userinfo without a colon is taken as the
    /// password. IPv6 hosts go in brackets (`redis://[::1]:6379`). `rediss://` is the same over
    /// TLS (the server's certificate is verified). Query options are not supported and are
    /// refused rather than ignored.
    public init(url: String) throws {
        func invalid(_ reason: String) -> RedisError {
            RedisError(.invalidConfiguration, "invalid Redis URL: \(reason)")
        }
        guard !url.contains("?"), !url.contains("#") else { throw invalid("query options are not supported") }
        let parsed: ServiceURL
        do {
            parsed = try ServiceURL(url, schemes: ["redis://", "rediss://"])
        } catch {
            throw invalid(error.reason == "it must start with redis://" ? "it must start with redis:// or rediss://" : error.reason)
        }
        // Without a colon the userinfo is the password (`redis://secret@host`).
        let username = parsed.secret == nil ? nil : parsed.userinfo
        let password = parsed.secret ?? parsed.userinfo
        var database = 0
        if !parsed.path.isEmpty {
            guard let value = Int(parsed.path), value >= 0 else { throw invalid("bad database '\(parsed.path)'") }
            database = value
        }
        self.init(
            host: parsed.host,
            port: parsed.port ?? 6379,
            username: username?.isEmpty == true ? nil : username,
            password: password?.isEmpty == true ? nil : password,
            database: database
        )
        if parsed.scheme == "rediss://" { tls = TLS() }
    }
}
