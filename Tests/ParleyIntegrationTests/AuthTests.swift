import Foundation
import JWTKit
import ParleyAuth
@testable import ParleyServer
import Testing

/// A server in JWT mode (HS256 with `Tokens.secret` unless `configure` says otherwise).
func withJWTServer<T>(_ configure: (inout ServerConfiguration) -> Void = { _ in }, _ body: (TestServer) async throws -> T) async throws -> T {
    try await withServer({ configuration in
        configuration.auth.jwtSecret = Tokens.secret
        configure(&configuration)
    }, body)
}

/// Expects an HTTP error answer: `status`, `{"error": {"code", "message"}}`.
func expectError(_ result: HTTPResult, _ status: Int, _ code: String, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(result.status == status, "\(result.json)", sourceLocation: sourceLocation)
    #expect(result.json["error"]["code"].string == code, "\(result.json)", sourceLocation: sourceLocation)
    #expect(result.json["error"]["message"].string?.isEmpty == false, sourceLocation: sourceLocation)
}

func bearer(_ token: String) -> [String: String] { ["Authorization": "Bearer \(token)"] }

/// Expects `GET /ws` + `query` to be refused: the upgrade is not made (the WebSocket library
/// answers 400), and the same request without the upgrade answers `status` and the error JSON.
func expectUpgradeRefused(
    _ server: TestServer, _ query: String, origin: String? = nil, status: Int, code: String,
    sourceLocation: SourceLocation = #_sourceLocation
) async throws {
    // The upgrade itself is answered with the refusal's status and error JSON ...
    let upgrade = try await rawHTTP(port: server.port, .GET, "/ws\(query)", headers: upgradeHeaders(origin: origin))
    #expect(upgrade.status == status, "upgrade \(query) -> \(upgrade.status)", sourceLocation: sourceLocation)
    #expect(upgrade.json["error"]["code"].string == code, "\(upgrade.body)", sourceLocation: sourceLocation)
    if status == 429 { #expect(upgrade.headers["Retry-After"].first != nil, sourceLocation: sourceLocation) }
    // ... and so is the same request without the upgrade.
    let plain = try await rawHTTP(port: server.port, .GET, "/ws\(query)", headers: origin.map { [("Origin", $0)] } ?? [])
    #expect(plain.status == status, "GET /ws\(query) -> \(plain.status) \(plain.body)", sourceLocation: sourceLocation)
    #expect(plain.json["error"]["code"].string == code, "\(plain.body)", sourceLocation: sourceLocation)
    if status == 429 { #expect(plain.headers["Retry-After"].first != nil, sourceLocation: sourceLocation) }
}

/// Checks that `token` is refused the same way on every transport: HTTP 401, the WebSocket
/// upgrade 401, `connect` `unauthorized`, SSE 401.
func expectRefused(_ token: String, on server: TestServer, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    expectError(try await http("GET", server.url("/api/rooms/r/messages"), headers: bearer(token)), 401, "unauthorized", sourceLocation: sourceLocation)
    try await expectUpgradeRefused(server, "?token=\(token)", status: 401, code: "unauthorized", sourceLocation: sourceLocation)
    let client = try await TestClient.connect(port: server.port)
    let reply = try await client.request("connect", ["token": token])
    #expect(reply["event"].string == "error", sourceLocation: sourceLocation)
    #expect(reply["data"]["code"].string == "unauthorized", "\(reply)", sourceLocation: sourceLocation)
    client.close()
    let sse = try await SSEClient.open(port: server.port, path: "/rooms/r/events?token=\(token)")
    #expect(sse.status == 401, sourceLocation: sourceLocation)
    sse.close()
}

@Suite("JWT authentication")
struct JWTAuthenticationTests {
    @Test("a valid HS256 token works on the WebSocket (query and connect), HTTP and SSE (header and query)")
    func validToken() async throws {
        try await withJWTServer { server in
            let token = try await Tokens.hs256(TestClaims(sub: "alice"))
            let byQuery = try await TestClient.connect(port: server.port, query: "?token=\(token)")
            #expect(try await byQuery.ack("connect")["user"].string == "alice")
            let byFrame = try await TestClient.connect(port: server.port)
            #expect(try await byFrame.ack("connect", ["token": token])["user"].string == "alice")
            try await byFrame.ack("join", ["room": "r"])
            let posted = try await http("POST", server.url("/api/rooms/r/messages"), body: #"{"content":"hi"}"#, headers: bearer(token))
            #expect(posted.status == 201)
            #expect(posted.json["user"].string == "alice")
            let read = try await http("GET", server.url("/api/rooms/r/messages"), headers: bearer(token))
            #expect(read.json["messages"].array?.count == 1)
            let sseHeader = try await SSEClient.open(port: server.port, path: "/rooms/r/events?since=0", headers: bearer(token))
            #expect(sseHeader.status == 200)
            #expect(try await sseHeader.expect("message").json["content"].string == "hi")
            let sseQuery = try await SSEClient.open(port: server.port, path: "/rooms/r/events?since=0&token=\(token)")
            #expect(sseQuery.status == 200)
            #expect(try await sseQuery.expect("message").json["user"].string == "alice")
        }
    }

    @Test("without a token every API, SSE and WebSocket call is unauthorized; health, metrics and the web client are not")
    func missingToken() async throws {
        try await withJWTServer { server in
            expectError(try await http("GET", server.url("/api/rooms")), 401, "unauthorized")
            expectError(try await http("GET", server.url("/api/rooms/r/messages")), 401, "unauthorized")
            expectError(try await http("GET", server.url("/api/rooms/r/presence")), 401, "unauthorized")
            expectError(try await http("GET", server.url("/api/users/alice")), 401, "unauthorized")
            expectError(try await http("POST", server.url("/api/rooms/r/messages"), body: #"{"content":"x","user":"alice"}"#), 401, "unauthorized")
            #expect(try await SSEClient.open(port: server.port, path: "/rooms/r/events?user=alice").status == 401)
            try await expectUpgradeRefused(server, "?user=alice", status: 401, code: "unauthorized")
            let client = try await TestClient.connect(port: server.port)
            #expect(try await client.request("join", ["room": "r"])["data"]["code"].string == "unauthorized")
            #expect(try await client.request("connect", ["user": "alice"])["data"]["code"].string == "unauthorized")
            #expect(try await http("GET", server.url("/healthz")).status == 200)
            #expect(try await http("GET", server.url("/readyz")).status == 200)
            #expect(try await rawHTTP(port: server.port, .GET, "/metrics").status == 200)
            #expect(try await rawHTTP(port: server.port, .GET, "/").status == 200)
        }
    }

    @Test("a token signed with another secret is refused")
    func forgedSignature() async throws {
        try await withJWTServer { server in
            try await expectRefused(try await Tokens.hs256(TestClaims(sub: "alice"), secret: Tokens.otherSecret), on: server)
            // The right signature over a payload changed afterwards.
            let good = try await Tokens.hs256(TestClaims(sub: "alice")).split(separator: ".")
            let evil = Tokens.base64URL(try JSONEncoder().encode(TestClaims(sub: "admin")))
            try await expectRefused("\(good[0]).\(evil).\(good[2])", on: server)
        }
    }

    @Test("an expired token is refused; one within the leeway is accepted")
    func expired() async throws {
        try await withJWTServer({ $0.auth.leewaySeconds = 30 }) { server in
            try await expectRefused(try await Tokens.hs256(TestClaims(sub: "alice", expiresIn: -120)), on: server)
            let late = try await Tokens.hs256(TestClaims(sub: "alice", expiresIn: -5))
            #expect(try await http("GET", server.url("/api/rooms"), headers: bearer(late)).status == 200)
            try await expectRefused(try await Tokens.hs256(TestClaims(sub: "alice", expiresIn: nil)), on: server)
        }
    }

    @Test("a token not valid yet (nbf) is refused")
    func notYetValid() async throws {
        try await withJWTServer { server in
            try await expectRefused(try await Tokens.hs256(TestClaims(sub: "alice", notBeforeIn: 600)), on: server)
            let soon = try await Tokens.hs256(TestClaims(sub: "alice", notBeforeIn: 5))
            #expect(try await http("GET", server.url("/api/rooms"), headers: bearer(soon)).status == 200)
        }
    }

    @Test("an unsigned token (alg none) is refused")
    func algNone() async throws {
        try await withJWTServer { server in
            for alg in ["none", "None", "NONE"] {
                try await expectRefused(try Tokens.raw(header: ["alg": alg, "typ": "JWT"], TestClaims(sub: "alice"), hmacKey: nil), on: server)
            }
            try await expectRefused(try Tokens.raw(header: ["typ": "JWT"], TestClaims(sub: "alice"), hmacKey: Array(Tokens.secret.utf8)), on: server)
        }
    }

    @Test("a token whose sub is missing or not a valid user id is refused")
    func invalidSubject() async throws {
        try await withJWTServer { server in
            try await expectRefused(try await Tokens.hs256(TestClaims(sub: nil)), on: server)
            try await expectRefused(try await Tokens.hs256(TestClaims(sub: "not valid!")), on: server)
            try await expectRefused(try await Tokens.hs256(TestClaims(sub: String(repeating: "a", count: 33))), on: server)
        }
    }

    @Test("a claimed user other than the token's sub is forbidden")
    func claimedUserMismatch() async throws {
        try await withJWTServer { server in
            let token = try await Tokens.hs256(TestClaims(sub: "alice"))
            try await expectUpgradeRefused(server, "?token=\(token)&user=bob", status: 403, code: "forbidden")
            let client = try await TestClient.connect(port: server.port)
            #expect(try await client.request("connect", ["token": token, "user": "bob"])["data"]["code"].string == "forbidden")
        }
    }

    @Test("iss and aud are checked when configured")
    func issuerAndAudience() async throws {
        try await withJWTServer({ $0.auth.issuer = "https://login.example.com"; $0.auth.audience = "parley" }) { server in
            let good = try await Tokens.hs256(TestClaims(sub: "alice", iss: "https://login.example.com", aud: "parley"))
            #expect(try await http("GET", server.url("/api/rooms"), headers: bearer(good)).status == 200)
            try await expectRefused(try await Tokens.hs256(TestClaims(sub: "alice", iss: "https://evil.example.com", aud: "parley")), on: server)
            try await expectRefused(try await Tokens.hs256(TestClaims(sub: "alice", iss: "https://login.example.com", aud: "other")), on: server)
            try await expectRefused(try await Tokens.hs256(TestClaims(sub: "alice")), on: server)
        }
    }
}

@Suite("JWT keys: RS256, ES256, PEM and JWKS")
struct JWTKeyTests {
    @Test("RS256 with a PEM public key; tokens from another key are refused")
    func rs256PEM() async throws {
        let pem = Tokens.file(Tokens.rsa.publicKey.pemRepresentation, name: "rsa.pem")
        try await withServer({ $0.auth.publicKeyFile = pem }) { server in
            let token = try await Tokens.rs256(TestClaims(sub: "alice"))
            #expect(try await http("GET", server.url("/api/rooms"), headers: bearer(token)).status == 200)
            let client = try await TestClient.connect(port: server.port, query: "?token=\(token)")
            #expect(try await client.ack("connect")["user"].string == "alice")
            try await expectRefused(try await Tokens.rs256(TestClaims(sub: "alice"), key: Tokens.otherRSA), on: server)
            // An ES256 or HS256 token is not accepted by an RS256 server.
            try await expectRefused(try await Tokens.es256(TestClaims(sub: "alice")), on: server)
            try await expectRefused(try await Tokens.hs256(TestClaims(sub: "alice")), on: server)
        }
    }

    @Test("ES256 with a PEM public key; tokens from another key are refused")
    func es256PEM() async throws {
        let pem = Tokens.file(Tokens.ec.publicKey.pemRepresentation, name: "ec.pem")
        try await withServer({ $0.auth.publicKeyFile = pem }) { server in
            let token = try await Tokens.es256(TestClaims(sub: "alice"))
            #expect(try await http("GET", server.url("/api/rooms"), headers: bearer(token)).status == 200)
            try await expectRefused(try await Tokens.es256(TestClaims(sub: "alice"), key: Tokens.otherEC), on: server)
            try await expectRefused(try await Tokens.rs256(TestClaims(sub: "alice")), on: server)
        }
    }

    @Test("algorithm confusion: an HS256 token keyed with the server's public key is refused")
    func algorithmConfusion() async throws {
        let rsaPEM = Tokens.rsa.publicKey.pemRepresentation
        let ecPEM = Tokens.ec.publicKey.pemRepresentation
        let rsaFile = Tokens.file(rsaPEM, name: "rsa.pem")
        try await withServer({ $0.auth.publicKeyFile = rsaFile }) { server in
            for key in [rsaPEM, rsaPEM + "\n", String(rsaPEM.dropLast())] {
                let forged = try Tokens.raw(header: ["alg": "HS256", "typ": "JWT"], TestClaims(sub: "admin"), hmacKey: Array(key.utf8))
                try await expectRefused(forged, on: server)
            }
        }
        let jwksFile = Tokens.file(try Tokens.jwks([Tokens.jwk(ec: Tokens.ec, kid: "ec-1")]), name: "jwks.json")
        try await withServer({ $0.auth.jwksFile = jwksFile }) { server in
            let forged = try Tokens.raw(header: ["alg": "HS256", "kid": "ec-1"], TestClaims(sub: "admin"), hmacKey: Array(ecPEM.utf8))
            try await expectRefused(forged, on: server)
        }
    }

    @Test("a JWKS with RS256 and ES256 keys: each token verifies with the key its kid names")
    func jwks() async throws {
        let set = try Tokens.jwks([Tokens.jwk(rsa: Tokens.rsa, kid: "rsa-1"), Tokens.jwk(ec: Tokens.ec, kid: "ec-1")])
        let path = Tokens.file(set, name: "jwks.json")
        try await withServer({ $0.auth.jwksFile = path }) { server in
            let rs = try await Tokens.rs256(TestClaims(sub: "alice"), kid: "rsa-1")
            let es = try await Tokens.es256(TestClaims(sub: "bob"), kid: "ec-1")
            #expect(try await http("POST", server.url("/api/rooms/r/messages"), body: #"{"content":"rs"}"#, headers: bearer(rs)).json["user"].string == "alice")
            #expect(try await http("POST", server.url("/api/rooms/r/messages"), body: #"{"content":"es"}"#, headers: bearer(es)).json["user"].string == "bob")
            let client = try await TestClient.connect(port: server.port)
            #expect(try await client.ack("connect", ["token": es])["user"].string == "bob")
            // A kid naming a key of another algorithm, an unknown kid, a key not in the set.
            try await expectRefused(try await Tokens.rs256(TestClaims(sub: "alice"), kid: "ec-1"), on: server)
            try await expectRefused(try await Tokens.rs256(TestClaims(sub: "alice"), kid: "nope"), on: server)
            try await expectRefused(try await Tokens.rs256(TestClaims(sub: "alice"), key: Tokens.otherRSA, kid: "rsa-1"), on: server)
            try await expectRefused(try await Tokens.es256(TestClaims(sub: "alice"), key: Tokens.otherEC, kid: "ec-1"), on: server)
        }
    }

    @Test("a short HS256 secret works like any other: tokens signed with it by another HMAC implementation pass, others do not")
    func shortSecret() async throws {
        let secret = "dev-secret"
        try await withServer({ $0.auth.jwtSecret = secret }) { server in
            let good = try Tokens.raw(header: ["alg": "HS256", "typ": "JWT"], TestClaims(sub: "alice"), hmacKey: Array(secret.utf8))
            let posted = try await http("POST", server.url("/api/rooms/r/messages"), body: #"{"content":"hi"}"#, headers: bearer(good))
            #expect(posted.status == 201)
            #expect(posted.json["user"].string == "alice")
            let client = try await TestClient.connect(port: server.port, query: "?token=\(good)")
            #expect(try await client.ack("connect")["user"].string == "alice")
            // The secret padded with zeros by hand is the same HMAC key (RFC 2104), but a
            // different secret is not.
            let other = try Tokens.raw(header: ["alg": "HS256", "typ": "JWT"], TestClaims(sub: "alice"), hmacKey: Array("dev-secreT".utf8))
            try await expectRefused(other, on: server)
            let minted = try await TokenMinter.hs256(user: "bob", secret: secret)
            let asBob = try await http("GET", server.url("/api/rooms/r/messages"), headers: bearer(minted))
            #expect(asBob.status == 200)
        }
    }

    @Test("unusable key configurations stop the server at start-up with a clear message")
    func startupErrors() async throws {
        func failure(_ configure: (inout ServerConfiguration) -> Void) async -> String? {
            do {
                try await withServer(configure) { _ in }
                return nil
            } catch let error as AuthConfigurationError {
                return error.message
            } catch {
                return "\(error)"
            }
        }
        #expect(await failure { $0.auth.jwtSecret = "" }?.contains("empty") == true)
        #expect(await failure { $0.auth.publicKeyFile = "/nonexistent/key.pem" }?.contains("cannot read") == true)
        let privatePEM = Tokens.file(Tokens.ec.pemRepresentation, name: "private.pem")
        #expect(await failure { $0.auth.publicKeyFile = privatePEM }?.contains("private key") == true)
        let garbage = Tokens.file("not a key", name: "garbage.pem")
        #expect(await failure { $0.auth.publicKeyFile = garbage }?.contains("PARLEY_JWT_PUBLIC_KEY_FILE") == true)
        let symmetric = Tokens.file(#"{"keys":[{"kty":"oct","kid":"k","k":"c2VjcmV0"}]}"#, name: "jwks.json")
        #expect(await failure { $0.auth.jwksFile = symmetric }?.contains("PARLEY_JWT_JWKS_FILE") == true)
    }
}

@Suite("JWT verification cost")
struct JWTCostTests {
    @Test("verifying a token (HS256, RS256, ES256) is cheap; figures printed")
    func cost() async throws {
        let rsaFile = Tokens.file(Tokens.rsa.publicKey.pemRepresentation, name: "rsa.pem")
        let ecFile = Tokens.file(Tokens.ec.publicKey.pemRepresentation, name: "ec.pem")
        var report: [String] = []
        for (name, configure, token) in [
            ("HS256", { (c: inout AuthConfiguration) in c.jwtSecret = Tokens.secret }, try await Tokens.hs256(TestClaims(sub: "alice"))),
            ("RS256", { (c: inout AuthConfiguration) in c.publicKeyFile = rsaFile }, try await Tokens.rs256(TestClaims(sub: "alice"))),
            ("ES256", { (c: inout AuthConfiguration) in c.publicKeyFile = ecFile }, try await Tokens.es256(TestClaims(sub: "alice"))),
        ] as [(String, (inout AuthConfiguration) -> Void, String)] {
            var configuration = AuthConfiguration()
            configure(&configuration)
            let verifier = try #require(try await TokenVerifier.load(configuration, limits: .init()))
            let rounds = 200
            let started = ContinuousClock.now
            for _ in 0..<rounds { #expect(try await verifier.verify(token).user == "alice") }
            let each = (ContinuousClock.now - started) / rounds
            report.append("\(name) \(each)")
            #expect(each < .milliseconds(50))
        }
        print("JWT verification per token (debug build): \(report.joined(separator: ", "))")
    }
}
