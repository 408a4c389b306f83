extension RedisConnection {
    /// HELLO 3 with AUTH (falling back to RESP2 when the server does not know HELLO), or AUTH,
    /// then SELECT. Runs on every (re)connection, so a restored connection has the same state.
    func handshake() async throws {
        if configuration.protocolVersion == .resp3 {
            var arguments: [any RESPArgument] = ["3"]
            if let password = configuration.password {
                arguments += ["AUTH", configuration.username ?? "default", password]
            }
            do {
                _ = try await send(RESPCommand("HELLO", arguments: arguments))
                handler.value.isRESP3 = true
                protocolVersion = .resp3
            } catch let error as RedisError where Self.isUnknownHello(error) {
                logger.debug("server refused HELLO 3, using RESP2", metadata: ["error": "\(error.message)"])
                try await authenticate()
            } catch let error as RedisError where Self.isAuthenticationFailure(error) {
                throw RedisError(.authenticationFailed, error.message)
            }
        } else {
            try await authenticate()
        }
        if configuration.database != 0 {
            _ = try await send("SELECT", configuration.database)
        }
    }

    /// RESP2 authentication: AUTH [user] password.
    private func authenticate() async throws {
        guard let password = configuration.password else { return }
        var arguments: [any RESPArgument] = [password]
        if let username = configuration.username { arguments.insert(username, at: 0) }
        do {
            _ = try await send(RESPCommand("AUTH", arguments: arguments))
        } catch let error as RedisError where error.code == .serverError {
            throw RedisError(.authenticationFailed, error.message)
        }
    }

    static func isUnknownHello(_ error: RedisError) -> Bool {
        error.serverErrorPrefix == "NOPROTO" || (error.code == .serverError && error.message.lowercased().contains("unknown command"))
    }

    static func isAuthenticationFailure(_ error: RedisError) -> Bool {
        guard error.code == .serverError else { return false }
        if let prefix = error.serverErrorPrefix, ["WRONGPASS", "NOAUTH", "NOPERM"].contains(prefix) { return true }
        let message = error.message.lowercased()
        return message.contains("invalid password") || message.contains("invalid username")
    }
}
