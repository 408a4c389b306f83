import Foundation
import ParleyPostgres
import ParleyRedis
@testable import ParleyServer
import ParleyTestSupport
import Testing

/// TLS to the backends is real or fails loudly: a redis-server and a PostgreSQL that speak
/// TLS with certificates of a throw-away CA serve a cluster instance; a wrong CA, or TLS asked
/// of a server without it, stops the connection instead of falling back to plaintext.
@Suite(
    "TLS to Redis and PostgreSQL",
    .serialized,
    .enabled(if: clusterTestsEnabled, "needs redis-server and PostgreSQL (scripts/install-test-deps)")
)
struct BackendTLSTests {
    @Test("rediss:// and sslmode=require with the CA's certificate carry a cluster instance over TLS")
    func clusterOverTLS() async throws {
        try await withHeavyTestLock {
            let certificates = try await TestCertificates.make()
            let redis = try await RedisTestServer.start(tls: certificates)
            defer { redis.kill() }
            let postgres = try await PostgresTestServer.start(tls: certificates)
            defer { postgres.destroy() }
            let databaseURL = try await postgres.createDatabase()
            try await withServer({
                var configuration = try! RedisConfiguration(url: redis.url)
                configuration.tls?.rootCertificateFile = certificates.caFile
                $0.cluster.redis = configuration
                $0.cluster.database = try! PostgresEndpoint(url: databaseURL + "?sslmode=require&sslrootcert=\(certificates.caFile)")
            }) { server in
                let alice = try await TestClient.connect(port: server.port, user: "alice")
                let bob = try await TestClient.connect(port: server.port, user: "bob")
                try await bob.ack("join", ["room": "secure"])
                try await alice.ack("message", ["room": "secure", "content": "over TLS both ways"])
                #expect(try await bob.expect("message")["content"].string == "over TLS both ways")
                let history = try await http("GET", server.url("/api/rooms/secure/messages"))
                #expect(history.json["messages"].array?.count == 1)
                // PostgreSQL says its clients' connections are encrypted.
                let encrypted = try await postgres.query("SELECT count(*) FROM pg_stat_ssl WHERE ssl")
                #expect((Int(encrypted.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0) >= 1, "\(encrypted)")
                #expect(try await http("GET", server.url("/readyz")).status == 200)
            }
        }
    }

    @Test("a server certificate from another CA, or TLS asked of a plaintext server, fails; nothing falls back to plaintext")
    func failsLoudly() async throws {
        try await withHeavyTestLock {
            let certificates = try await TestCertificates.make()
            let redis = try await RedisTestServer.start(tls: certificates)
            defer { redis.kill() }
            var wrongCA = try RedisConfiguration(url: redis.url)
            wrongCA.tls?.rootCertificateFile = certificates.otherCAFile
            wrongCA.connectTimeout = .seconds(5)
            await #expect(throws: RedisError.self) { _ = try await RedisConnection.connect(configuration: wrongCA) }
            var plaintext = try RedisConfiguration(url: "redis://127.0.0.1:\(redis.port)")
            plaintext.commandTimeout = .seconds(2)
            await #expect(throws: (any Error).self) {
                let connection = try await RedisConnection.connect(configuration: plaintext)
                _ = try await connection.send("PING")
            }
            var good = try RedisConfiguration(url: redis.url)
            good.tls?.rootCertificateFile = certificates.caFile
            let connection = try await RedisConnection.connect(configuration: good)
            #expect(try await connection.send("PING").string == "PONG")
            await connection.close()

            // PostgreSQL: another CA, a missing CA file, and TLS required of a server without it.
            let postgres = try await PostgresTestServer.start(tls: certificates)
            defer { postgres.destroy() }
            let url = try await postgres.createDatabase()
            for options in ["?sslmode=require&sslrootcert=\(certificates.otherCAFile)", "?sslmode=require&sslrootcert=/nonexistent/ca.pem"] {
                var configuration = try PostgresStore.Configuration(url: url + options)
                configuration.operationTimeout = .seconds(5)
                configuration.startupTimeout = .seconds(1)
                await #expect(throws: (any Error).self, "\(options)") { _ = try await PostgresStore.open(configuration) }
            }
            let plain = try await PostgresTestServer.shared()
            var required = try PostgresStore.Configuration(url: try await plain.createDatabase() + "?sslmode=require&sslrootcert=\(certificates.caFile)")
            required.operationTimeout = .seconds(5)
            required.startupTimeout = .seconds(1)
            await #expect(throws: (any Error).self) { _ = try await PostgresStore.open(required) }
        }
    }
}
