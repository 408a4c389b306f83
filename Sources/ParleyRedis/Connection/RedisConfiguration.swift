/// Where and how to connect. Every field has a default; see `init(url:)` and
/// `init(environment:)` for the two ways Parley fills it in.
public struct RedisConfiguration: Sendable, Hashable {
    public enum ProtocolVersion: Int, Sendable, Hashable {
        case resp2 = 2
        /// Sends `HELLO 3`, and falls back to RESP2 when the server does not know HELLO (Redis < 6).
        case resp3 = 3
    }

    public var host: String
    public var port: Int
    /// The ACL user; nil means `default`.
    public var username: String?
    /// Sent with HELLO (or AUTH) on every (re)connection when set.
    public var password: String?
    /// Selected on every (re)connection when not 0.
    public var database: Int
    public var protocolVersion: ProtocolVersion = .resp3
    public var connectTimeout: Duration = .seconds(5)
    /// How long a command waits for its reply (and a reconnecting client for a connection).
    /// Nil waits forever.
    public var commandTimeout: Duration? = .seconds(5)
    public var limits = RESPLimits()
    public var reconnect = RedisBackoff()
    /// Messages each subscription buffers for a slow consumer before it drops new ones.
    public var subscriptionBufferSize = 1024
    /// TLS to the server (`rediss://`), nil for plaintext.
    public var tls: TLS?

    /// TLS settings: the server's certificate and host name are always verified, against
    /// `rootCertificateFile` (a PEM CA) when set, else the system's roots.
    public struct TLS: Sendable, Hashable {
        public var rootCertificateFile: String?

        public init(rootCertificateFile: String? = nil) {
            self.rootCertificateFile = rootCertificateFile
        }
    }

    public init(
        host: String = "127.0.0.1",
        port: Int = 6379,
        username: String? = nil,
        password: String? = nil,
        database: Int = 0
    ) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
    }
}
