import Foundation
import NIOHTTP1
import ParleyPostgres
import ParleyTestSupport
@testable import ParleyServer
import Testing

/// A bounded, seeded fuzz run against a live server: mutated valid inputs and random inputs
/// for WebSocket frames and commands, HTTP paths, query strings and bodies, and tokens.
/// Every input must be answered in time with a spec'd answer, and the store must hold exactly
/// the seed messages plus those the fuzzer saw succeed.
///
/// `PARLEY_FUZZ_ITERATIONS` (default 1200) and `PARLEY_FUZZ_SEED` make longer or other runs.
@Suite("Fuzzing")
struct FuzzTests {
    static let apiKey = "fuzz-backend-key-0123456789abcdef"
    static let codes: [String: Int] = [
        "bad_request": 400, "unauthorized": 401, "forbidden": 403, "not_found": 404, "too_large": 413,
        "rate_limited": 429, "unavailable": 503, "internal": 500,
    ]
    static let serverEvents: Set<String> = ["ack", "error", "pong", "message", "join", "leave", "typing", "read", "notify"]

    /// What a run found: message ids it saw stored, and how many inputs of each kind it sent.
    struct Run {
        var evidence: Set<String> = []
        var frames = 0
        var requests = 0
        var tokens = 0
        var failures: [String] = []

        mutating func fail(_ why: String) {
            if failures.count < 20 { failures.append(why) }
        }
    }

    /// The stores a fuzz run drives: the default SQLite, and PostgreSQL where a server can be
    /// started (the durable stores are where a cursor overflow once trapped).
    static var stores: [String] { PostgresTestServer.isAvailable ? ["sqlite", "postgres"] : ["sqlite"] }

    @Test("fuzzed frames, requests and tokens: spec'd errors, no crash, no hang, store unchanged", arguments: stores)
    func fuzz(store: String) async throws {
        let environment = ProcessInfo.processInfo.environment
        let iterations = environment["PARLEY_FUZZ_ITERATIONS"].flatMap { Int($0) } ?? 1200
        let seed = environment["PARLEY_FUZZ_SEED"].flatMap { UInt64($0) } ?? 0x5EED_CAFE
        let database = store == "postgres" ? try await PostgresTestServer.shared().createDatabase() : nil
        try await withJWTServer({
            $0.auth.apiKeys = [Self.apiKey]
            $0.limits.ratePerSecond = 0
            // Budgets would answer most inputs before they are parsed (FloodTests tries them).
            $0.limits.commandRatePerSecond = 0
            if let database { $0.cluster.database = try! PostgresEndpoint(url: database) }
        }) { server in
            let started = ContinuousClock.now
            var mutator = Mutator(random: SeededRandom(seed: seed))
            var run = Run()
            let alice = try await Tokens.hs256(TestClaims(sub: "alice"))
            let seeds = try await seedMessages(server, token: alice)
            run.evidence.formUnion(seeds.compactMap { $0["id"].string })

            let frameCount = iterations * 6 / 10
            let requestCount = iterations * 2 / 10
            try await fuzzFrames(server, count: frameCount, token: alice, mutator: &mutator, run: &run)
            try await fuzzRequests(server, count: requestCount, token: alice, mutator: &mutator, run: &run)
            try await fuzzTokens(server, count: iterations - frameCount - requestCount, token: alice, mutator: &mutator, run: &run)

            try await checkStore(server, seeds: seeds, run: &run)
            // Still serving.
            let client = try await TestClient.connect(port: server.port, query: "?token=\(alice)")
            try await client.ack("message", ["room": "after-fuzz", "content": "still serving"])
            let elapsed = ContinuousClock.now - started
            print("fuzz: \(run.frames + run.requests + run.tokens) inputs (\(run.frames) WebSocket frames, \(run.requests) HTTP requests, \(run.tokens) tokens), seed \(seed), in \(elapsed)")
            #expect(run.failures.isEmpty, "\(run.failures.joined(separator: "\n"))")
        }
    }

    private func seedMessages(_ server: TestServer, token: String) async throws -> [JSON] {
        var seeds: [JSON] = []
        for (room, content) in [("fuzz", "first"), ("fuzz", "second"), ("other", "third"), ("fuzz", "fourth")] {
            let posted = try await http("POST", server.url("/api/rooms/\(room)/messages"), body: jsonText(["content": content, "clientId": "seed-\(content)"]), headers: bearer(token))
            try #require(posted.status == 201)
            seeds.append(posted.json)
        }
        return seeds
    }

    // MARK: WebSocket frames

    private func frameCorpus(token: String, mutator: inout Mutator) -> [[String: Any]] {
        [
            ["event": "message", "data": ["room": "fuzz", "content": "hello", "clientId": "c-\(mutator.random.next() % 50)"]],
            ["event": "message", "data": ["room": "fuzz2", "content": "  spaced  "]],
            ["event": "join", "data": ["room": "fuzz", "since": 0]],
            ["event": "join", "data": ["room": "fuzz3"]],
            ["event": "leave", "data": ["room": "fuzz3"]],
            ["event": "typing", "data": ["room": "fuzz", "typing": true]],
            ["event": "read", "data": ["room": "fuzz", "seq": 1]],
            ["event": "history", "data": ["room": "fuzz", "before": 3, "after": 0, "limit": 2]],
            ["event": "presence", "data": ["room": "fuzz"]],
            ["event": "ping", "data": [:]],
            ["event": "dm", "data": ["user": "bob", "since": 0]],
            ["event": "message", "data": ["room": "dm:alice:bob", "content": "psst @bob"]],
            ["event": "join", "data": ["room": "dm:bob:carol"]],
            ["event": "rooms", "data": [:]],
            ["event": "search", "data": ["text": "hello fuzz", "limit": 5, "before": "01ZZZZZZZZZZZZZZZZZZZZZZZZ"]],
            ["event": "connect", "data": ["token": fuzzToken(token, mutator: &mutator)]],
            ["event": "connect", "data": ["user": "alice"]],
        ]
    }

    /// One fuzzed frame: a structured mutation of a valid frame, a byte-level one, or random
    /// JSON. Anything that still parses as an object gets `id` so that its answer (and a
    /// stored message's ack) can be matched.
    private func fuzzFrame(id: Int, token: String, mutator: inout Mutator) -> String {
        var frame = mutator.random.pick(frameCorpus(token: token, mutator: &mutator))
        switch Int.random(in: 0..<10, using: &mutator.random) {
        case 0...3:
            var data = frame["data"] as? [String: Any] ?? [:]
            let key = data.keys.isEmpty ? "room" : mutator.random.pick(Array(data.keys))
            switch Int.random(in: 0..<4, using: &mutator.random) {
            case 0: data[key] = mutator.jsonValue()
            case 1: data[key] = nil
            case 2: data[mutator.random.pick(["room", "content", "since", "extra", "typing"])] = mutator.jsonValue()
            default: frame["event"] = mutator.random.chance(0.5) ? mutator.random.pick(Array(Self.serverEvents)) : mutator.jsonValue(depth: 0)
            }
            frame["data"] = mutator.random.chance(0.1) ? mutator.jsonValue() : data
        case 4:
            frame = mutator.random.chance(0.5) ? ["event": mutator.jsonValue(depth: 0), "data": mutator.jsonValue()] : [:]
        default:
            break
        }
        frame["id"] = id
        var text = String(decoding: (try? JSONSerialization.data(withJSONObject: frame)) ?? Data("{}".utf8), as: UTF8.self)
        if mutator.random.chance(0.5) {
            text = mutator.mutate(text)
            if let data = text.data(using: .utf8), var object = (try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])) as? [String: Any] {
                object["id"] = id
                if let encoded = try? JSONSerialization.data(withJSONObject: object) { text = String(decoding: encoded, as: UTF8.self) }
            }
        } else if mutator.random.chance(0.05) {
            text = mutator.randomText(maxLength: 200)
        }
        return text
    }

    private func fuzzFrames(_ server: TestServer, count: Int, token: String, mutator: inout Mutator, run: inout Run) async throws {
        let client = try await TestClient.connect(port: server.port, query: "?token=\(token)")
        try await client.ack("join", ["room": "fuzz"])
        var sent = 0
        var barrier = 0
        while sent < count {
            for _ in 0..<min(8, count - sent) {
                client.sendText(fuzzFrame(id: 1000 + sent, token: token, mutator: &mutator))
                sent += 1
            }
            barrier += 1
            client.send("ping", id: -barrier)
            // Everything before the barrier's pong answers the batch.
            var answered = false
            while let frame = try await client.next(timeout: .seconds(10)) {
                if frame["event"].string == "pong", frame["id"].int == -barrier {
                    answered = true
                    break
                }
                check(frame, run: &run)
            }
            guard answered else {
                run.fail("no answer to the batch before frame \(sent) within 10 s (closed: \(String(describing: await client.closed(timeout: .zero))))")
                return
            }
        }
        run.frames = sent
        client.close()
    }

    private func check(_ frame: JSON, run: inout Run) {
        guard let event = frame["event"].string, Self.serverEvents.contains(event) else {
            run.fail("unexpected frame \(frame)")
            return
        }
        switch event {
        case "error":
            if Self.codes[frame["data"]["code"].string ?? ""] == nil || frame["data"]["message"].string?.isEmpty != false {
                run.fail("error frame without a spec'd code and a message: \(frame)")
            }
            if frame["data"]["code"].string == "internal" { run.fail("internal error: \(frame)") }
        case "ack" where frame["data"]["seq"].int != nil && frame["data"]["content"].string != nil:
            if let id = frame["data"]["id"].string { run.evidence.insert(id) }
        case "message":
            if let id = frame["data"]["id"].string { run.evidence.insert(id) }
        default:
            break
        }
    }

    // MARK: HTTP requests

    /// A path segment: a known room, or a fuzzed one, percent-encoded (never empty, never a
    /// separator, so the path keeps its route's shape).
    private func segment(_ mutator: inout Mutator) -> String {
        var raw = mutator.random.pick(["fuzz", "other", "fuzz2", "alice"])
        if mutator.random.chance(0.4) { raw = mutator.random.chance(0.5) ? mutator.mutate(raw) : mutator.random.pick(Mutator.nasty) }
        raw = String(raw.map { "/?#".contains($0) ? "_" : $0 })
        if raw.isEmpty || raw == "." || raw == ".." { raw = " " }
        return raw.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~:"))) ?? "x"
    }

    private func queryValue(_ mutator: inout Mutator) -> String {
        let value = mutator.random.chance(0.5) ? String(describing: mutator.random.pick([0, 1, 2, 50, 100, 101, -1, Int.max])) : "\(mutator.jsonValue(depth: 0))"
        return value.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "x"
    }

    private func authorization(_ token: String, mutator: inout Mutator) -> [(String, String)] {
        switch Int.random(in: 0..<6, using: &mutator.random) {
        case 0, 1: return [("Authorization", "Bearer \(token)")]
        case 2: return [("Authorization", "Bearer \(Self.apiKey)")]
        case 3: return [("Authorization", "Bearer \(headerSafe(fuzzToken(token, mutator: &mutator)))")]
        case 4: return [("Authorization", headerSafe(mutator.random.pick(["Basic YTpi", "Bearer", "Bearer  ", "bearer \(token)", mutator.randomText(maxLength: 30)])))]
        default: return []
        }
    }

    private func headerSafe(_ value: String) -> String {
        String(value.unicodeScalars.filter { $0.value >= 0x20 && $0.value < 0x7f }.map(Character.init))
    }

    private func fuzzRequests(_ server: TestServer, count: Int, token: String, mutator: inout Mutator, run: inout Run) async throws {
        for _ in 0..<count {
            var method = HTTPMethod.GET
            var path: String
            var body: String?
            var headers = authorization(token, mutator: &mutator)
            var stream = false
            switch Int.random(in: 0..<6, using: &mutator.random) {
            case 0, 1:
                method = .POST
                path = "/api/rooms/\(segment(&mutator))/messages"
                var object: [String: Any] = ["content": "fuzz \(mutator.random.next() % 1000)"]
                if mutator.random.chance(0.3) { object["clientId"] = mutator.jsonValue(depth: 0) }
                if mutator.random.chance(0.3) { object["user"] = mutator.random.chance(0.5) ? "bob" : mutator.jsonValue(depth: 0) }
                if mutator.random.chance(0.3) { object[mutator.random.pick(["content", "x"])] = mutator.jsonValue() }
                body = String(decoding: try JSONSerialization.data(withJSONObject: object), as: UTF8.self)
                if mutator.random.chance(0.4) { body = mutator.mutate(body!) }
                if mutator.random.chance(0.03) { body = String(repeating: "x", count: 70 * 1024) }
            case 2:
                path = "/api/rooms/\(segment(&mutator))/messages?before=\(queryValue(&mutator))&after=\(queryValue(&mutator))&limit=\(queryValue(&mutator))"
            case 3:
                path = mutator.random.chance(0.5) ? "/api/rooms/\(segment(&mutator))/presence" : "/api/users/\(segment(&mutator))"
            case 4:
                stream = true
                path = "/rooms/\(segment(&mutator))/events?since=\(queryValue(&mutator))&token=\(headerSafe(fuzzToken(token, mutator: &mutator)).addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "")"
                if mutator.random.chance(0.5) { headers.append(("Last-Event-ID", headerSafe(mutator.mutate("3")))) }
            case 5 where mutator.random.chance(0.5):
                path = mutator.random.chance(0.5)
                    ? "/api/search?q=\(queryValue(&mutator))&before=\(queryValue(&mutator))&limit=\(queryValue(&mutator))"
                    : "/api/me/rooms?user=\(queryValue(&mutator))"
            default:
                path = "/api/rooms"
            }
            let response = try await rawHTTP(port: server.port, method, path, headers: headers, body: body, untilHead: stream)
            run.requests += 1
            if response.status == 0 { run.fail("\(method) \(path): closed without an answer"); continue }
            if response.status == 201, let id = response.json["id"].string { run.evidence.insert(id) }
            if response.status >= 400 { checkErrorBody(response, request: "\(method) \(path) \(body?.prefix(80) ?? "")", run: &run) }
        }
    }

    private func checkErrorBody(_ response: RawResponse, request: String, run: inout Run) {
        let code = response.json["error"]["code"].string ?? ""
        guard let status = Self.codes[code], status == response.status, response.json["error"]["message"].string?.isEmpty == false else {
            run.fail("\(request) -> \(response.status) without the spec'd error JSON: \(response.body.prefix(200))")
            return
        }
        if code == "internal" { run.fail("\(request) -> internal error \(response.body)") }
        if code == "rate_limited", response.headers["Retry-After"].isEmpty { run.fail("\(request) -> 429 without Retry-After") }
    }

    // MARK: Tokens

    /// A mutated token: bytes, segments swapped or replaced with random headers and claims,
    /// `alg` games, sizes past the limit.
    private func fuzzToken(_ token: String, mutator: inout Mutator) -> String {
        var parts = token.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        switch Int.random(in: 0..<7, using: &mutator.random) {
        case 0: return mutator.mutate(token)
        case 1:
            let header: [String: Any] = [
                "alg": mutator.random.pick(["none", "HS256", "RS256", "ES256", "HS512", "", "hs256"] as [Any] + [mutator.jsonValue(depth: 0)]),
                "kid": mutator.jsonValue(depth: 0), "typ": "JWT", "crit": mutator.random.chance(0.2) ? ["exp"] : [],
            ]
            parts[0] = Tokens.base64URL((try? JSONSerialization.data(withJSONObject: header)) ?? Data())
        case 2:
            let claims: [String: Any] = [
                "sub": mutator.random.chance(0.5) ? "alice" : mutator.jsonValue(depth: 0),
                "exp": mutator.random.chance(0.5) ? Date().timeIntervalSince1970 + 3600 : mutator.jsonValue(depth: 0),
                "rooms": mutator.jsonValue(), "nbf": mutator.jsonValue(depth: 0), "aud": mutator.jsonValue(),
            ]
            parts[1] = Tokens.base64URL((try? JSONSerialization.data(withJSONObject: claims)) ?? Data())
        case 3: parts[2] = mutator.random.chance(0.5) ? "" : Tokens.base64URL(Data((0..<32).map { _ in UInt8.random(in: 0...255, using: &mutator.random) }))
        case 4: parts = mutator.random.chance(0.5) ? Array(parts.prefix(Int.random(in: 0...2, using: &mutator.random))) : parts + parts
        case 5: return String(repeating: token, count: 1 + 9000 / max(1, token.count))
        default: return mutator.randomText(maxLength: 60)
        }
        return parts.joined(separator: ".")
    }

    private func fuzzTokens(_ server: TestServer, count: Int, token: String, mutator: inout Mutator, run: inout Run) async throws {
        for index in 0..<count {
            let fuzzed = headerSafe(fuzzToken(token, mutator: &mutator))
            if index % 4 == 0 {
                let query = fuzzed.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""
                // The upgrade is made (101) or refused with its status and error JSON, the same
                // as the request without the upgrade.
                let upgrade = try await rawHTTP(port: server.port, .GET, "/ws?token=\(query)", headers: upgradeHeaders())
                let plain = try await rawHTTP(port: server.port, .GET, "/ws?token=\(query)")
                if upgrade.status != 101 {
                    checkErrorBody(upgrade, request: "upgrade with \(fuzzed.prefix(120))", run: &run)
                    if upgrade.status != plain.status { run.fail("upgrade with \(fuzzed.prefix(120)) -> \(upgrade.status), plain GET -> \(plain.status)") }
                }
                if plain.status == 426, upgrade.status != 101 { run.fail("upgrade refused but \(fuzzed.prefix(120)) is valid") }
                if plain.status != 426 { checkErrorBody(plain, request: "GET /ws with \(fuzzed.prefix(120))", run: &run) }
            } else {
                let response = try await rawHTTP(port: server.port, .GET, "/api/rooms/fuzz/messages", headers: [("Authorization", "Bearer \(fuzzed)")])
                if response.status != 200 { checkErrorBody(response, request: "token \(fuzzed.prefix(120))", run: &run) }
                if response.status == 200, fuzzed != token, fuzzed != Self.apiKey {
                    // Only a token that still carries a valid signature over its claims may pass.
                    let accepted = fuzzed.split(separator: ".").prefix(2).joined(separator: ".") == token.split(separator: ".").prefix(2).joined(separator: ".")
                    if !accepted { run.fail("a changed token was accepted: \(fuzzed.prefix(200))") }
                }
            }
            run.tokens += 1
        }
    }

    // MARK: The store afterwards

    private func checkStore(_ server: TestServer, seeds: [JSON], run: inout Run) async throws {
        let key = [("Authorization", "Bearer \(Self.apiKey)")]
        let rooms = try await rawHTTP(port: server.port, .GET, "/api/rooms", headers: key).json["rooms"].array ?? []
        var stored: [String: JSON] = [:]
        for room in rooms.compactMap({ $0["room"].string }) {
            var after = 0
            while true {
                let page = try await rawHTTP(port: server.port, .GET, "/api/rooms/\(room)/messages?after=\(after)&limit=100", headers: key).json
                for message in page["messages"].array ?? [] {
                    if let id = message["id"].string { stored[id] = message }
                    after = max(after, message["seq"].int ?? after)
                }
                if page["hasMore"].bool != true { break }
            }
        }
        for seed in seeds where stored[seed["id"].string ?? ""] != seed {
            run.fail("seed message changed or lost: \(seed)")
        }
        for (id, message) in stored where !run.evidence.contains(id) {
            run.fail("a message was stored without the fuzzer seeing it succeed: \(message)")
        }
    }
}
