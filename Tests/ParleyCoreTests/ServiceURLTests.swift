import ParleyCore
import ParleyPostgres
import Testing

@Suite("Service URLs (Redis and PostgreSQL share one parser)")
struct ServiceURLTests {
    @Test("userinfo, IPv6 hosts, ports, paths and options are split and decoded")
    func parts() throws {
        let url = try ServiceURL("POSTGRES://us%40er:p%3Ass@[::1]:6543/db%20name?sslmode=require&sslrootcert=%2Fca.pem", schemes: ["postgres://"])
        #expect(url.scheme == "postgres://")
        #expect(url.userinfo == "us@er")
        #expect(url.secret == "p:ss")
        #expect(url.host == "::1")
        #expect(url.port == 6543)
        #expect(url.path == "db%20name")
        #expect(url.query.map(\.name) == ["sslmode", "sslrootcert"])
        #expect(url.query.last?.value == "/ca.pem")
        let bare = try ServiceURL("redis://cache", schemes: ["redis://"])
        #expect(bare.userinfo == nil && bare.secret == nil && bare.port == nil && bare.path.isEmpty)
    }

    @Test("malformed URLs are refused with the reason")
    func refusals() {
        for (url, reason) in [
            ("http://x", "it must start with redis://"), ("redis://", "no host"), ("redis://h:0", "bad port '0'"),
            ("redis://h:99999", "bad port '99999'"), ("redis://[::1", "unclosed IPv6 bracket"), ("redis://[::1]x", "unexpected text after the IPv6 host"),
            ("redis://a%zz@h", "bad percent-encoding"), ("redis://h#frag", "fragments are not supported"), ("redis://h?novalue", "unsupported option 'novalue'"),
        ] {
            #expect(throws: ServiceURL.Invalid.self, "\(url)") { try ServiceURL(url, schemes: ["redis://"]) }
            do {
                _ = try ServiceURL(url, schemes: ["redis://"])
            } catch {
                #expect(error.reason == reason)
            }
        }
    }

    @Test("PostgreSQL reads the userinfo as the user, and its options")
    func postgres() throws {
        let endpoint = try PostgresEndpoint(url: "postgresql://parley@db.internal/chat?sslmode=prefer")
        #expect(endpoint.username == "parley" && endpoint.password == nil && endpoint.host == "db.internal" && endpoint.port == 5432)
        #expect(endpoint.database == "chat" && endpoint.tls == .prefer)
        #expect(throws: ParleyPostgresError.self) { try PostgresEndpoint(url: "postgres://h/db?sslmode=always") }
        #expect(throws: ParleyPostgresError.self) { try PostgresEndpoint(url: "postgres://h/db?pool=3") }
    }
}
