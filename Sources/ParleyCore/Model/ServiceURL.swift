/// `scheme://[userinfo@]host[:port][/path][?query]`, the shape of Redis and PostgreSQL URLs:
/// one parser, so both decode percent-escapes and IPv6 hosts the same way. What the parts mean
/// (which userinfo part is the user, what the path names, which query options exist) is the
/// caller's.
public struct ServiceURL: Sendable {
    /// Lower-cased, with `://`.
    public var scheme: String
    /// The userinfo before its first `:` (or all of it), percent-decoded; nil without `@`.
    public var userinfo: String?
    /// The userinfo after its first `:`, percent-decoded; nil without a colon.
    public var secret: String?
    /// Without brackets for an IPv6 address.
    public var host: String
    public var port: Int?
    /// After the `/` that follows the host, not decoded; empty when absent.
    public var path: Substring
    /// `name=value` options after `?`, values percent-decoded, in order.
    public var query: [(name: String, value: String)]

    /// A URL that cannot be parsed; `reason` says why, for the caller's message.
    public struct Invalid: Error, Sendable {
        public let reason: String
    }

    public init(_ url: String, schemes: [String]) throws(Invalid) {
        let lowered = url.lowercased()
        guard let scheme = schemes.first(where: { lowered.hasPrefix($0) }) else {
            throw Invalid(reason: "it must start with \(schemes[0])")
        }
        self.scheme = scheme
        var rest = Substring(url.dropFirst(scheme.count))
        guard !rest.contains("#") else { throw Invalid(reason: "fragments are not supported") }
        query = []
        if let question = rest.firstIndex(of: "?") {
            for option in rest[rest.index(after: question)...].split(separator: "&") {
                let parts = option.split(separator: "=", maxSplits: 1)
                guard parts.count == 2 else { throw Invalid(reason: "unsupported option '\(option)'") }
                query.append((String(parts[0]), try Self.percentDecoded(parts[1])))
            }
            rest = rest[..<question]
        }
        path = ""
        if let slash = rest.firstIndex(of: "/") {
            path = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
        }
        if let at = rest.lastIndex(of: "@") {
            let info = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = info.firstIndex(of: ":") {
                userinfo = try Self.percentDecoded(info[..<colon])
                secret = try Self.percentDecoded(info[info.index(after: colon)...])
            } else {
                userinfo = try Self.percentDecoded(info)
            }
        }
        var host = rest
        var portPart: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw Invalid(reason: "unclosed IPv6 bracket") }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw Invalid(reason: "unexpected text after the IPv6 host") }
                portPart = after.dropFirst()
            }
        } else if let colon = rest.lastIndex(of: ":") {
            host = rest[..<colon]
            portPart = rest[rest.index(after: colon)...]
        }
        guard !host.isEmpty else { throw Invalid(reason: "no host") }
        self.host = String(host)
        if let portPart {
            guard let value = Int(portPart), (1...65535).contains(value) else { throw Invalid(reason: "bad port '\(portPart)'") }
            port = value
        }
    }

    /// `%XX` escapes decoded as UTF-8.
    public static func percentDecoded(_ text: Substring) throws(Invalid) -> String {
        guard text.contains("%") else { return String(text) }
        var bytes: [UInt8] = []
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else {
                throw Invalid(reason: "bad percent-encoding")
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
