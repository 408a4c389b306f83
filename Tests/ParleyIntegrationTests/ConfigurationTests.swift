@testable import parley
import ParleyPostgres
import ParleyRedis
import ParleyServer
import Testing

@Suite("Configuration from flags and environment")
struct ConfigurationTests {
    @Test("defaults are the embedded ones")
    func defaults() throws {
        let configuration = try Serve.parse([]).resolve(environment: Environment(values: [:]))
        #expect(configuration.port == 8080)
        #expect(configuration.grpcPort == 50051)
        #expect(configuration.dataDirectory == "./data")
        #expect(configuration.storage == .sqlite)
        #expect(configuration.limits.ratePerSecond == 20)
        #expect(configuration.limits.rateBurst == 40)
        #expect(configuration.limits.maxContentLength == 4000)
        #expect(configuration.limits.maxFrameBytes == 65536)
    }

    @Test("the environment names of PROTOCOL.md are honoured and a flag wins over them")
    func precedence() throws {
        let environment = Environment(values: [
            "PORT": "9001", "PARLEY_GRPC_PORT": "50052", "PARLEY_DATA_DIR": "/tmp/x",
            "PARLEY_RATE_PER_SEC": "0", "PARLEY_RATE_BURST": "7", "PARLEY_OUTBOX_BYTES": "1024",
        ])
        let fromEnvironment = try Serve.parse([]).resolve(environment: environment)
        #expect(fromEnvironment.port == 9001)
        #expect(fromEnvironment.grpcPort == 50052)
        #expect(fromEnvironment.dataDirectory == "/tmp/x")
        #expect(fromEnvironment.limits.ratePerSecond == 0)
        #expect(fromEnvironment.limits.rateBurst == 7)
        #expect(fromEnvironment.limits.maxOutboxBytes == 1024)
        let flagged = try Serve.parse(["--port", "9002", "--rate-per-sec", "5"]).resolve(environment: environment)
        #expect(flagged.port == 9002)
        #expect(flagged.limits.ratePerSecond == 5)
    }

    @Test("invalid values are refused with the variable's name")
    func invalidValues() async throws {
        #expect(throws: ConfigurationError.self) { try Serve.parse([]).resolve(environment: Environment(values: ["PORT": "http"])) }
        #expect(throws: InvalidConfiguration.self) { try Serve.parse([]).resolve(environment: Environment(values: ["PORT": "70000"])).validate() }
        #expect(throws: ConfigurationError.self) { try Serve.parse([]).resolve(environment: Environment(values: ["PARLEY_STORAGE": "mongo"])) }
        #expect(throws: InvalidConfiguration.self) { try Serve.parse(["--rate-per-sec=-1"]).resolve(environment: Environment(values: [:])).validate() }
        // A server built without the executable is checked the same way.
        var embedded = ServerConfiguration()
        embedded.limits.largeRoomSize = -1
        await #expect(throws: InvalidConfiguration.self) { _ = try await ParleyServer.build(embedded) }
        do {
            _ = try Serve.parse([]).resolve(environment: Environment(values: ["PARLEY_RATE_BURST": "lots"]))
            Issue.record("accepted a non-number")
        } catch let error as ConfigurationError {
            #expect(error.message.contains("PARLEY_RATE_BURST"))
        }
    }

    @Test("cluster mode: Redis and PostgreSQL from flags, PARLEY_* URLs or REDIS_HOST")
    func cluster() throws {
        let none = try Serve.parse([]).resolve(environment: Environment(values: [:]))
        #expect(none.cluster.redis == nil && none.cluster.database == nil)

        let environment = Environment(values: [
            "PARLEY_REDIS_URL": "redis://:pw@cache:6380/2", "PARLEY_DATABASE_URL": "postgres://app:s%40cret@db:5433/chat",
            "PARLEY_INSTANCE_TTL_MS": "2000", "PARLEY_RESYNC_INTERVAL": "0", "PARLEY_INSTANCE_ID": "east-1",
        ])
        let c = try Serve.parse([]).resolve(environment: environment).cluster
        #expect(c.redis?.host == "cache" && c.redis?.port == 6380 && c.redis?.password == "pw" && c.redis?.database == 2)
        #expect(c.database?.host == "db" && c.database?.port == 5433 && c.database?.username == "app")
        #expect(c.database?.password == "s@cret" && c.database?.database == "chat")
        #expect(c.instanceTTL == .seconds(2) && c.resyncInterval == nil && c.instanceID == "east-1")

        let flagged = try Serve.parse(["--redis", "redis://other", "--database", "postgresql://u@h/d?sslmode=require"])
            .resolve(environment: environment).cluster
        #expect(flagged.redis?.host == "other" && flagged.redis?.port == 6379)
        #expect(flagged.database?.host == "h" && flagged.database?.tls == .require)

        let seeded = try Serve.parse([]).resolve(environment: Environment(values: ["REDIS_HOST": "r", "REDIS_PORT": "7000", "REDIS_PASSWORD": "x"]))
        #expect(seeded.cluster.redis?.host == "r" && seeded.cluster.redis?.port == 7000 && seeded.cluster.redis?.password == "x")

        for bad in [["PARLEY_REDIS_URL": "http://x"], ["PARLEY_DATABASE_URL": "mysql://x"], ["PARLEY_INSTANCE_TTL_MS": "10"], ["REDIS_HOST": "r", "REDIS_PORT": "no"]] {
            #expect(throws: ConfigurationError.self) { try Serve.parse([]).resolve(environment: Environment(values: bad)) }
        }
    }

    @Test("--help explains every option with its environment variable")
    func help() {
        let help = Serve.helpMessage()
        for name in [
            "PORT", "PARLEY_GRPC_PORT", "PARLEY_DATA_DIR", "PARLEY_RATE_PER_SEC", "PARLEY_RATE_BURST", "PARLEY_MAX_FRAME_BYTES",
            "PARLEY_JWT_SECRET", "PARLEY_JWT_PUBLIC_KEY_FILE", "PARLEY_JWT_JWKS_FILE", "PARLEY_JWT_LEEWAY", "PARLEY_API_KEY",
            "PARLEY_TOKEN_REFRESH_GRACE", "PARLEY_USER_RATE_PER_SEC", "PARLEY_MAX_CONNECTIONS", "PARLEY_MAX_CONNECTIONS_PER_IP",
            "PARLEY_ALLOWED_ORIGINS", "PARLEY_CORS_ORIGINS", "PARLEY_REDIS_URL", "REDIS_HOST", "PARLEY_DATABASE_URL",
            "PARLEY_INSTANCE_TTL_MS",
        ] {
            #expect(help.contains(name), "\(name) missing from --help")
        }
    }

    @Test("authentication and abuse limits from the environment; a short HS256 secret is accepted")
    func security() throws {
        let environment = Environment(values: [
            "PARLEY_JWT_SECRET": String(repeating: "s", count: 32), "PARLEY_API_KEY": "one, two,,",
            "PARLEY_JWT_LEEWAY": "5", "PARLEY_MAX_CONNECTIONS_PER_IP": "3", "PARLEY_ALLOWED_ORIGINS": "https://a.example, https://b.example",
            "PARLEY_CORS_ORIGINS": "*", "PARLEY_USER_RATE_PER_SEC": "7",
        ])
        let c = try Serve.parse(["--max-connections", "9"]).resolve(environment: environment)
        #expect(c.auth.jwtSecret?.count == 32)
        #expect(c.auth.apiKeys == ["one", "two"])
        #expect(c.auth.leewaySeconds == 5)
        #expect(c.limits.maxConnections == 9)
        #expect(c.limits.maxConnectionsPerIP == 3)
        #expect(c.allowedOrigins == ["https://a.example", "https://b.example"])
        #expect(c.corsOrigins == ["*"])
        #expect(c.limits.effectiveUserRate.perSecond == 7)
        #expect(c.limits.effectiveUserRate.burst == 80)
        let defaults = try Serve.parse([]).resolve(environment: Environment(values: [:]))
        #expect(defaults.auth.isOpen)
        #expect(defaults.allowedOrigins == nil)
        #expect(defaults.limits.effectiveUserRate.perSecond == 40)
        let short = try Serve.parse([]).resolve(environment: Environment(values: ["PARLEY_JWT_SECRET": "short"]))
        #expect(short.auth.jwtSecret == "short")
    }

    @Test("a key setting that is set but empty stops start-up instead of turning authentication off")
    func emptyKeysRefused() throws {
        for name in ["PARLEY_JWT_SECRET", "PARLEY_JWT_PUBLIC_KEY_FILE", "PARLEY_JWT_JWKS_FILE", "PARLEY_API_KEY"] {
            for blank in ["", "  ", "\n"] {
                #expect(throws: ConfigurationError.self, "\(name)=\(blank.debugDescription)") {
                    try Serve.parse([]).resolve(environment: Environment(values: [name: blank]))
                }
            }
        }
        #expect(throws: ConfigurationError.self) { try Serve.parse(["--jwt-secret", ""]).resolve(environment: Environment(values: [:])) }
        #expect(throws: ConfigurationError.self) { try Serve.parse([]).resolve(environment: Environment(values: ["PARLEY_API_KEY": " , ,"])) }
        // Unset is still open mode, for development.
        #expect(try Serve.parse([]).resolve(environment: Environment(values: [:])).auth.isOpen)
    }

    @Test("the event loops follow the CPUs the process may run on (taskset), read from /proc/self/status")
    func allowedCPUs() {
        #expect(EventLoopSizing.allowedCPUCount(procStatus: "Name:\tparley\nCpus_allowed_list:\t1\nMems_allowed:\t1\n") == 1)
        #expect(EventLoopSizing.allowedCPUCount(procStatus: "Cpus_allowed_list:\t0-3,6,8-9\n") == 7)
        #expect(EventLoopSizing.allowedCPUCount(procStatus: "Cpus_allowed:\t3\n") == nil)
        #expect(EventLoopSizing.allowedCPUCount(procStatus: "Cpus_allowed_list:\t3-1\n") == nil)
        #expect(EventLoopSizing.allowedCPUCount(procStatus: "Cpus_allowed_list:\tx\n") == nil)
    }
}
