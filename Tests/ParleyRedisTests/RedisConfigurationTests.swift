import Testing

@testable import ParleyRedis

@Suite("Configuration from URL and environment")
struct RedisConfigurationTests {
    @Test func fullURL() throws {
        let configuration = try RedisConfiguration(url: "redis://alice:s%40cret@cache.local:6380/3")
        #expect(configuration.host == "cache.local")
        #expect(configuration.port == 6380)
        #expect(configuration.username == "alice")
        #expect(configuration.password == "s@cret")
        #expect(configuration.database == 3)
        #expect(configuration.tls == nil)
    }

    @Test func tlsScheme() throws {
        let configuration = try RedisConfiguration(url: "rediss://:pw@cache.example.com:6380")
        #expect(configuration.tls == RedisConfiguration.TLS())
        #expect(configuration.host == "cache.example.com")
        #expect(configuration.password == "pw")
    }

    @Test func passwordOnlyAndDefaults() throws {
        let withColon = try RedisConfiguration(url: "redis://:pw@localhost")
        #expect(withColon.username == nil)
        #expect(withColon.password == "pw")
        #expect(withColon.port == 6379)
        #expect(withColon.database == 0)
        let withoutColon = try RedisConfiguration(url: "redis://pw@localhost:7000/")
        #expect(withoutColon.password == "pw")
        #expect(withoutColon.port == 7000)
        let plain = try RedisConfiguration(url: "REDIS://127.0.0.1")
        #expect(plain.host == "127.0.0.1")
        #expect(plain.password == nil)
    }

    @Test func ipv6Host() throws {
        let configuration = try RedisConfiguration(url: "redis://[::1]:6390/1")
        #expect(configuration.host == "::1")
        #expect(configuration.port == 6390)
        #expect(configuration.database == 1)
    }

    @Test(arguments: [
        "http://localhost", "redisss://localhost", "redis://", "redis://:pw@", "redis://host:0",
        "redis://host:port", "redis://host/x", "redis://host/-1", "redis://host?timeout=1", "redis://[::1",
        "redis://:%zz@host",
    ])
    func invalidURLs(url: String) {
        #expect {
            try RedisConfiguration(url: url)
        } throws: { error in
            (error as? RedisError)?.code == .invalidConfiguration
        }
    }

    @Test func environment() throws {
        #expect(try RedisConfiguration(environment: [:]) == nil)
        #expect(try RedisConfiguration(environment: ["REDIS_HOST": ""]) == nil)
        let configuration = try #require(
            try RedisConfiguration(environment: ["REDIS_HOST": "redis", "REDIS_PORT": "6400", "REDIS_PASSWORD": "pw"])
        )
        #expect(configuration.host == "redis")
        #expect(configuration.port == 6400)
        #expect(configuration.password == "pw")
        #expect(try RedisConfiguration(environment: ["REDIS_HOST": "redis"])?.port == 6379)
        #expect(throws: RedisError.self) { try RedisConfiguration(environment: ["REDIS_HOST": "r", "REDIS_PORT": "x"]) }
    }
}
