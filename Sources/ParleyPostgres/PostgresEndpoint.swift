import NIOCore
import NIOSSL
import ParleyCore
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
        let parsed: ServiceURL
        do {
            parsed = try ServiceURL(url, schemes: ["postgres://", "postgresql://"])
        } catch {
            throw invalid(error.reason)
        }
        var tls = TLSMode.disable
        var rootCertificateFile: String?
        for (name, value) in parsed.query {
            switch name {
            case "sslmode":
                guard let mode = TLSMode(rawValue: value) else { throw invalid("sslmode must be disable, prefer or require") }
                tls = mode
            case "sslrootcert":
                rootCertificateFile = value
            default:
                throw invalid("unsupported option '\(name)=\(value)'")
            }
        }
        let database: String?
        do {
            database = parsed.path.isEmpty ? nil : try ServiceURL.percentDecoded(parsed.path)
        } catch {
            throw invalid(error.reason)
        }
        // Without a colon the userinfo is the user (`postgres://parley@host`).
        let username = parsed.userinfo ?? "postgres"
        guard !username.isEmpty else { throw invalid("no host or no user") }
        self.init(
            host: parsed.host, port: parsed.port ?? 5432, username: username,
            password: parsed.secret?.isEmpty == true ? nil : parsed.secret,
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
}

/// A configuration error of the PostgreSQL store.
public struct ParleyPostgresError: Error, Sendable, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
