import NIOCore
import NIOSSL
import PostgresNIO

/// Where the database is: parsed from `postgres://[user[:password]@]host[:port][/database]`
/// (`postgresql://` too). User and password may be percent-encoded. Query options:
/// `sslmode`: `disable` (the default), `prefer` or `require`; `sslrootcert`: a PEM file of the
/// CA that signed the server's certificate (the system's roots otherwise). With TLS the
/// server's certificate and host name are always verified (libpq's `verify-full`); a TLS
/// setup that cannot be built is an error, never a silent fall back to plaintext.
public struct PostgresEndpoint: Sendable, Hashable {
    public enum TLSMode: String, Sendable, Hashable { case disable, prefer, require }

    public var host: String
    public var port: Int
    public var username: String
    public var password: String?
    public var database: String?
    public var tls: TLSMode
    /// PEM file of the CA to trust for the server's certificate (`sslrootcert`).
    public var rootCertificateFile: String?

    public init(host: String = "127.0.0.1", port: Int = 5432, username: String = "postgres", password: String? = nil, database: String? = nil, tls: TLSMode = .disable, rootCertificateFile: String? = nil) {
        self.rootCertificateFile = rootCertificateFile
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
        self.tls = tls
    }

    public init(url: String) throws {
        func invalid(_ reason: String) -> ParleyPostgresError { ParleyPostgresError("invalid database URL: \(reason)") }
        let lowered = url.lowercased()
        guard let scheme = ["postgres://", "postgresql://"].first(where: { lowered.hasPrefix($0) }) else {
            throw invalid("it must start with postgres://")
        }
        var rest = Substring(url.dropFirst(scheme.count))
        var tls = TLSMode.disable
        var rootCertificateFile: String?
        if let question = rest.firstIndex(of: "?") {
            for option in rest[rest.index(after: question)...].split(separator: "&") {
                let parts = option.split(separator: "=", maxSplits: 1).map(String.init)
                guard parts.count == 2 else { throw invalid("unsupported option '\(option)'") }
                switch parts[0] {
                case "sslmode":
                    guard let mode = TLSMode(rawValue: parts[1]) else { throw invalid("sslmode must be disable, prefer or require") }
                    tls = mode
                case "sslrootcert":
                    rootCertificateFile = try Self.percentDecoded(Substring(parts[1]))
                default:
                    throw invalid("unsupported option '\(option)'")
                }
            }
            rest = rest[..<question]
        }
        var database: String?
        if let slash = rest.firstIndex(of: "/") {
            let name = rest[rest.index(after: slash)...]
            database = name.isEmpty ? nil : try Self.percentDecoded(name)
            rest = rest[..<slash]
        }
        var username = "postgres"
        var password: String?
        if let at = rest.lastIndex(of: "@") {
            let userinfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = userinfo.firstIndex(of: ":") {
                username = try Self.percentDecoded(userinfo[..<colon])
                password = try Self.percentDecoded(userinfo[userinfo.index(after: colon)...])
            } else {
                username = try Self.percentDecoded(userinfo)
            }
        }
        var host = rest
        var port = 5432
        if let colon = rest.lastIndex(of: ":"), !rest.hasSuffix("]") {
            host = rest[..<colon]
            guard let value = Int(rest[rest.index(after: colon)...]), (1...65535).contains(value) else { throw invalid("bad port") }
            port = value
        }
        if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        guard !host.isEmpty, !username.isEmpty else { throw invalid("no host or no user") }
        self.init(
            host: String(host), port: port, username: username, password: password?.isEmpty == true ? nil : password,
            database: database, tls: tls, rootCertificateFile: rootCertificateFile
        )
    }

    /// The URL without its password, for logs.
    public var redacted: String {
        "postgres://\(username)\(password == nil ? "" : ":***")@\(host):\(port)/\(database ?? "")"
    }

    /// Verifies the server's certificate and host name, against `rootCertificateFile` when set.
    var tlsConfiguration: TLSConfiguration {
        var configuration = TLSConfiguration.makeClientConfiguration()
        if let rootCertificateFile { configuration.trustRoots = .file(rootCertificateFile) }
        return configuration
    }

    var clientConfiguration: PostgresClient.Configuration {
        let tls: PostgresClient.Configuration.TLS = switch self.tls {
        case .disable: .disable
        case .prefer: .prefer(tlsConfiguration)
        case .require: .require(tlsConfiguration)
        }
        return PostgresClient.Configuration(host: host, port: port, username: username, password: password, database: database, tls: tls)
    }

    /// Throws when the TLS context cannot be built (an unreadable `sslrootcert`, say): the
    /// connection must not quietly go without it.
    func connectionConfiguration(connectTimeout: Duration) throws -> PostgresConnection.Configuration {
        let tls: PostgresConnection.Configuration.TLS
        do {
            tls = switch self.tls {
            case .disable: .disable
            case .prefer: .prefer(try NIOSSLContext(configuration: tlsConfiguration))
            case .require: .require(try NIOSSLContext(configuration: tlsConfiguration))
            }
        } catch {
            throw ParleyPostgresError("cannot set up TLS for PostgreSQL (sslmode=\(self.tls.rawValue)\(rootCertificateFile.map { ", sslrootcert=\($0)" } ?? "")): \(error)")
        }
        var configuration = PostgresConnection.Configuration(host: host, port: port, username: username, password: password, database: database, tls: tls)
        configuration.options.connectTimeout = TimeAmount(connectTimeout)
        return configuration
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
                throw ParleyPostgresError("invalid database URL: bad percent-encoding")
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

/// A configuration error of the PostgreSQL store.
public struct ParleyPostgresError: Error, Sendable, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
