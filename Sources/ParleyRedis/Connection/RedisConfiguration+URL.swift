extension RedisConfiguration {
    /// Parses `redis://[[user]:password@]host[:port][/db]`.
    ///
    /// User and password may be percent-encoded. A userinfo without a colon is taken as the
    /// password. IPv6 hosts go in brackets (`redis://[::1]:6379`). `rediss://` is the same over
    /// TLS (the server's certificate is verified). Query options are not supported and are
    /// refused rather than ignored.
    public init(url: String) throws {
        func invalid(_ reason: String) -> RedisError {
            RedisError(.invalidConfiguration, "invalid Redis URL: \(reason)")
        }
        let lowered = url.lowercased()
        guard let scheme = ["redis://", "rediss://"].first(where: { lowered.hasPrefix($0) }) else {
            throw invalid("it must start with redis:// or rediss://")
        }
        var rest = url.dropFirst(scheme.count)
        guard !rest.contains("?"), !rest.contains("#") else { throw invalid("query options are not supported") }

        var databasePart: Substring = ""
        if let slash = rest.firstIndex(of: "/") {
            databasePart = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
        }
        var username: String?
        var password: String?
        if let at = rest.lastIndex(of: "@") {
            let userinfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = userinfo.firstIndex(of: ":") {
                username = try Self.percentDecoded(userinfo[..<colon])
                password = try Self.percentDecoded(userinfo[userinfo.index(after: colon)...])
            } else {
                password = try Self.percentDecoded(userinfo)
            }
        }

        var host = rest
        var portPart: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw invalid("unclosed IPv6 bracket") }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw invalid("unexpected text after the IPv6 host") }
                portPart = after.dropFirst()
            }
        } else if let colon = rest.lastIndex(of: ":") {
            host = rest[..<colon]
            portPart = rest[rest.index(after: colon)...]
        }
        guard !host.isEmpty else { throw invalid("no host") }
        var port = 6379
        if let portPart {
            guard let value = Int(portPart), (1...65535).contains(value) else { throw invalid("bad port '\(portPart)'") }
            port = value
        }
        var database = 0
        if !databasePart.isEmpty {
            guard let value = Int(databasePart), value >= 0 else { throw invalid("bad database '\(databasePart)'") }
            database = value
        }
        self.init(
            host: String(host),
            port: port,
            username: username?.isEmpty == true ? nil : username,
            password: password?.isEmpty == true ? nil : password,
            database: database
        )
        if scheme == "rediss://" { tls = TLS() }
    }

    private static func percentDecoded(_ text: Substring) throws -> String {
        guard text.contains("%") else { return String(text) }
        var bytes: [UInt8] = []
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else {
                throw RedisError(.invalidConfiguration, "invalid Redis URL: bad percent-encoding")
            }
            bytes.append(high << 4 | low)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
