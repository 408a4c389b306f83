import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import ParleyGRPC
import ParleyPostgres
import ParleyRedis
import ParleyServer
import ParleyTestSupport
import Testing

/// Real Redis and PostgreSQL shared by several instances.
struct ClusterBackends {
    let redis: RedisTestServer
    let postgres: PostgresTestServer
    let databaseURL: String
    /// The PostgreSQL server belongs to this test (it may be stopped); else it is shared.
    let ownsPostgres: Bool

    static func start(privatePostgres: Bool = false) async throws -> ClusterBackends {
        let redis = try await RedisTestServer.start()
        let postgres = privatePostgres ? try await PostgresTestServer.start() : try await PostgresTestServer.shared()
        return ClusterBackends(redis: redis, postgres: postgres, databaseURL: try await postgres.createDatabase(), ownsPostgres: privatePostgres)
    }

    func stop() {
        redis.kill()
        if ownsPostgres { postgres.destroy() }
    }

    /// Starts a Redis and a database for a Python suite's cluster tests when both can run,
    /// naming them in `environment` (`PARLEY_TEST_REDIS_URL`, `PARLEY_TEST_DATABASE_URL`).
    static func startForPython(_ environment: inout [String: String]) async throws -> ClusterBackends? {
        guard RedisTestServer.isAvailable && PostgresTestServer.isAvailable else { return nil }
        let backends = try await ClusterBackends.start()
        environment["PARLEY_TEST_REDIS_URL"] = backends.redis.url
        environment["PARLEY_TEST_DATABASE_URL"] = backends.databaseURL
        return backends
    }

    /// Fast failure detection and reconnection, no rate limit.
    func configure(_ c: inout ServerConfiguration) {
        var redis = try! RedisConfiguration(url: self.redis.url)
        redis.reconnect = RedisBackoff(initialDelay: .milliseconds(20), maximumDelay: .milliseconds(250))
        redis.commandTimeout = .seconds(2)
        c.cluster.redis = redis
        c.cluster.database = try! PostgresEndpoint(url: databaseURL)
        c.cluster.instanceTTL = .seconds(1)
        c.cluster.resyncInterval = .seconds(1)
        c.limits.ratePerSecond = 0
    }

    /// Flags of `parley serve` for the same backends.
    var arguments: [String] {
        ["--redis", redis.url, "--database", databaseURL, "--instance-ttl-ms", "1000", "--resync-interval", "1", "--rate-per-sec", "0"]
    }
}

/// Runs `body` with `count` in-process instances sharing fresh backends; stops everything.
func withCluster<T>(
    instances count: Int = 3, privatePostgres: Bool = false, configure: @escaping (inout ServerConfiguration) -> Void = { _ in },
    _ body: ([TestServer], ClusterBackends) async throws -> T
) async throws -> T {
    try await withHeavyTestLock { try await runCluster(instances: count, privatePostgres: privatePostgres, configure: configure, body) }
}

private func runCluster<T>(
    instances count: Int, privatePostgres: Bool, configure: (inout ServerConfiguration) -> Void,
    _ body: ([TestServer], ClusterBackends) async throws -> T
) async throws -> T {
    let backends = try await ClusterBackends.start(privatePostgres: privatePostgres)
    var servers: [TestServer] = []
    do {
        for _ in 0..<count {
            servers.append(try await TestServer.start { configuration in
                backends.configure(&configuration)
                configure(&configuration)
            })
        }
        let result = try await body(servers, backends)
        for server in servers { await server.stop() }
        backends.stop()
        return result
    } catch {
        for server in servers { await server.stop() }
        backends.stop()
        throw error
    }
}

let clusterTestsEnabled = RedisTestServer.isAvailable && PostgresTestServer.isAvailable && PostgresTestServer.canStartPrivate

@Suite(
    "Several instances through Redis and PostgreSQL",
    .serialized,
    .enabled(if: clusterTestsEnabled, "needs redis-server and PostgreSQL (scripts/install-test-deps); PARLEY_REQUIRE_REDIS/POSTGRES=1 make this a failure"),
    .timeLimit(.minutes(3))
)
struct ClusterTests {
    @Test("a DM and a mention reach the user's sessions on every other instance as notify events")
    func notificationsAcrossInstances() async throws {
        try await withCluster(instances: 2) { servers, _ in
            let alice = try await TestClient.connect(port: servers[0].port, user: "alice")
            let bob = try await TestClient.connect(port: servers[1].port, user: "bob")
            _ = try await bob.request("ping")
            // The user channel's subscription is made as the session opens; wait until Redis carries it.
            try await alice.ack("dm", ["user": "bob"])
            var note: JSON?
            for attempt in 1...50 where note == nil {
                try await alice.ack("message", ["room": "dm:alice:bob", "content": "psst \(attempt)"])
                note = try? await bob.expect("notify", timeout: .milliseconds(200))
            }
            #expect(note?["kind"].string == "dm" && note?["message"]["user"].string == "alice")
            try await alice.ack("join", ["room": "lobby"])
            try await alice.ack("message", ["room": "lobby", "content": "@bob look"])
            let mention = try await bob.expect("notify") { $0["kind"].string == "mention" }
            #expect(mention["room"].string == "lobby")
        }
    }

    @Test("edits, reactions, replies and deletions made on one instance reach members on another in order, and resume there")
    func changesAcrossInstances() async throws {
        try await withCluster(instances: 2) { servers, _ in
            let alice = try await TestClient.connect(port: servers[0].port, user: "alice")
            let bob = try await TestClient.connect(port: servers[1].port, user: "bob")
            try await alice.ack("join", ["room": "c"])
            try await bob.ack("join", ["room": "c"])
            let id = try #require(try await alice.ack("message", ["room": "c", "content": "draft"])["id"].string)
            #expect(try await bob.expect("message")["seq"].int == 1)
            try await alice.ack("edit", ["room": "c", "id": id, "content": "final"])
            try await bob.ack("react", ["room": "c", "id": id, "emoji": "👍"])
            try await alice.ack("message", ["room": "c", "content": "ok?", "replyTo": id])
            try await alice.ack("delete", ["room": "c", "id": id])
            var rows: [JSON] = []
            for _ in 0..<4 { rows.append(try await bob.expect("message")) }
            #expect(rows.map { $0["seq"].int } == [2, 3, 4, 5])
            #expect(rows.map { $0["kind"].string ?? "message" } == ["edit", "react", "message", "delete"])
            #expect(rows[0]["content"].string == "final" && rows[2]["quote"]["content"].string == "final")
            // A client that last saw seq 1 resumes on the other instance.
            let late = try await TestClient.connect(port: servers[0].port, user: "carol")
            try await late.ack("join", ["room": "c", "since": 1])
            var replay: [JSON] = []
            for _ in 0..<4 { replay.append(try await late.expect("message")) }
            #expect(replay.map { $0["kind"].string ?? "message" } == ["edit", "react", "message", "delete"])
            #expect(replay[0]["content"].string == "" && replay[2]["quote"]["deleted"].bool == true)
        }
    }

    @Test("a mute made on one instance refuses the next message on another; a ban there takes the user's session out of the room")
    func moderationAcrossInstances() async throws {
        let key = "cluster-moderation-key-0123456789abcdef"
        try await withCluster(instances: 2, configure: { $0.auth.apiKeys = [key] }) { servers, _ in
            let moderator = try await TestClient.connect(port: servers[0].port, user: "mod")
            let bob = try await TestClient.connect(port: servers[1].port, user: "bob")
            try await moderator.ack("join", ["room": "m"])
            try await bob.ack("join", ["room": "m"])
            try await bob.ack("message", ["room": "m", "content": "first"])
            let muted = try await http(
                "POST", servers[0].url("/api/rooms/m/moderation"),
                body: #"{"action":"mute","user":"bob","seconds":600,"reason":"flooding","moderator":"mod"}"#, headers: bearer(key)
            )
            #expect(muted.status == 201 && muted.json["kind"].string == "mute" && muted.json["target"].string == "bob" && muted.json["until"].string != nil)
            // The very next message, on the other instance, is refused with the reason.
            let refused = try await http("POST", servers[1].url("/api/rooms/m/messages"), body: #"{"content":"second","user":"bob"}"#)
            expectError(refused, 403, "forbidden")
            #expect(refused.json["error"]["message"].string?.contains("flooding") == true)
            let row = try await bob.expect("message") { $0["kind"].string == "mute" }
            #expect(row["content"].string == "flooding" && row["user"].string == "mod")
            // A plain user may not moderate.
            let denied = try await bob.request("moderate", ["room": "m", "user": "mod", "action": "ban"])
            #expect(denied["data"]["code"].string == "forbidden")
            // A ban: bob's session on the other instance gets the row, then is out of the room.
            _ = try await http(
                "POST", servers[0].url("/api/rooms/m/moderation"), body: #"{"action":"ban","user":"bob","moderator":"mod"}"#, headers: bearer(key)
            )
            _ = try await bob.expect("message") { $0["kind"].string == "ban" }
            _ = try await moderator.expect("leave") { $0["user"].string == "bob" }
            let rejoin = try await bob.request("join", ["room": "m"])
            #expect(rejoin["data"]["code"].string == "forbidden" && rejoin["data"]["message"].string?.contains("banned") == true)
            try await moderator.ack("message", ["room": "m", "content": "after the ban"])
            #expect(try await bob.next(timeout: .milliseconds(300)) == nil)
            let audit = try await http("GET", servers[1].url("/api/rooms/m/messages?user=mod"))
            #expect(audit.json["messages"].array?.compactMap { $0["kind"].string } == ["mute", "ban"])
        }
    }

    @Test("a file uploaded through one instance is in a message and served, with ranges, by another")
    func attachmentsAcrossInstances() async throws {
        try await withCluster(instances: 2) { servers, _ in
            let png = pngBytes(width: 32, height: 16, filler: 150_000)
            let uploaded = try await httpData("POST", servers[0].url("/api/rooms/f/attachments?user=alice&name=chart.png"), body: png)
            #expect(uploaded.status == 201)
            let attachment = try JSON.parse(String(decoding: uploaded.body, as: UTF8.self))
            let id = try #require(attachment["id"].string)
            #expect(attachment["width"].int == 32 && attachment["type"].string == "image/png")
            let bob = try await TestClient.connect(port: servers[1].port, user: "bob")
            try await bob.ack("join", ["room": "f"])
            let alice = try await TestClient.connect(port: servers[0].port, user: "alice")
            try await alice.ack("message", ["room": "f", "content": "the chart", "attachments": [id]])
            let delivered = try await bob.expect("message")
            #expect(delivered["attachments"][0]["id"].string == id && delivered["attachments"][0]["height"].int == 16)
            let whole = try await httpData("GET", servers[1].url("/api/attachments/\(id)"))
            #expect(whole.status == 200 && whole.body == png)
            let part = try await httpData("GET", servers[1].url("/api/attachments/\(id)"), headers: ["Range": "bytes=65530-65545"])
            #expect(part.status == 206 && part.body == png[65_530...65_545])
        }
    }

    @Test("unread counts agree on two sessions of one user on different instances; a read on one moves the other's at once")
    func unreadAcrossInstances() async throws {
        try await withCluster(instances: 2) { servers, _ in
            let alice = try await TestClient.connect(port: servers[0].port, user: "alice")
            let phone = try await TestClient.connect(port: servers[0].port, user: "bob")
            let laptop = try await TestClient.connect(port: servers[1].port, user: "bob")
            try await alice.ack("join", ["room": "team"])
            try await phone.ack("join", ["room": "team"])
            var last = JSON.missing
            for content in ["one", "two @bob", "three"] { last = try await alice.ack("message", ["room": "team", "content": content]) }
            let seq = try #require(last["seq"].int)
            for client in [phone, laptop] {
                let rooms = try await client.ack("rooms")["rooms"].array ?? []
                let team = rooms.first { $0["room"].string == "team" }
                #expect(team?["unread"].int == 3 && team?["mentions"].int == 1 && team?["read"].int == 0, "\(rooms)")
                #expect(team?["lastMessage"]["content"].string == "three")
            }
            // The laptop never joined the room, yet hears of the read made on the phone.
            var heard = JSON.missing
            for _ in 1...50 where heard == .missing {
                try await phone.ack("read", ["room": "team", "seq": seq])
                heard = (try? await laptop.expect("read", timeout: .milliseconds(200)) { $0["user"].string == "bob" }) ?? .missing
            }
            #expect(heard["room"].string == "team" && heard["seq"].int == seq)
            let team = try await laptop.ack("rooms")["rooms"].array?.first { $0["room"].string == "team" }
            #expect(team?["unread"].int == 0 && team?["read"].int == seq)
            let overHTTP = try await http("GET", servers[1].url("/api/me/rooms?user=bob"))
            #expect(overHTTP.json["rooms"].array?.first { $0["room"].string == "team" }?["unread"].int == 0)
        }
    }

    @Test("clients on different instances chat, see each other's presence, and rooms stay apart")
    func chatAcrossInstances() async throws {
        try await withCluster { servers, _ in
            let alice = try await TestClient.connect(port: servers[0].port, user: "alice")
            let bob = try await TestClient.connect(port: servers[1].port, user: "bob")
            let carol = try await TestClient.connect(port: servers[2].port, user: "carol")
            try await alice.ack("join", ["room": "general"])
            let bobJoin = try await bob.ack("join", ["room": "general"])
            #expect(bobJoin["users"].array?.compactMap { $0["user"].string } == ["alice", "bob"])
            let joined = try await alice.expect("join")
            #expect(joined["user"].string == "bob")
            try await carol.ack("join", ["room": "other"])

            let stored = try await alice.ack("message", ["room": "general", "content": "hello from A", "clientId": "a1"])
            #expect(try await bob.expect("message") == stored)
            let elsewhere = try await bob.ack("message", ["room": "other", "content": "hello from B"])
            // carol's first message is the one of her room: nothing of `general` leaked to her.
            #expect(try await carol.expect("message") == elsewhere)

            let presence = try await carol.ack("presence", ["room": "general"])
            #expect(presence["users"].array?.compactMap { $0["user"].string } == ["alice", "bob"])
            let rooms = try await http("GET", servers[2].url("/api/rooms"))
            let general = rooms.json["rooms"].array?.first { $0["room"].string == "general" }
            #expect(general?["seq"].int == 1)
            #expect(general?["online"].int == 2)
            let user = try await http("GET", servers[0].url("/api/users/carol"))
            #expect(user.json["rooms"].array?.compactMap(\.string) == ["other"])

            // An idempotent retry through another instance returns the original.
            let retry = try await bob.request("message", ["room": "general", "content": "hello from A", "clientId": "a1"])
            #expect(retry["event"].string == "ack")
            let sameUser = try await TestClient.connect(port: servers[2].port, user: "alice")
            let retried = try await sameUser.ack("message", ["room": "general", "content": "hello from A", "clientId": "a1"])
            #expect(retried == stored)

            bob.close()
            let left = try await alice.expect("leave")
            #expect(left["user"].string == "bob")
        }
    }

    @Test("gRPC in cluster mode: SendMessage on one instance reaches a JoinChat on another and a WebSocket on a third")
    func grpcAcrossInstances() async throws {
        try await withCluster { servers, _ in
            let web = try await TestClient.connect(port: servers[2].port, user: "web")
            try await web.ack("join", ["room": "ops"])
            try await withChatClient(port: servers[1].grpcPort) { watcherClient in
                let watcher = EventStream.join(watcherClient, room: "ops", user: "watcher", since: 0)
                _ = try #require(await watcher.next())
                try await withChatClient(port: servers[0].grpcPort) { client in
                    for index in 1...20 {
                        _ = try await client.sendMessage(.with { $0.roomID = "ops"; $0.senderID = "bot"; $0.content = "m\(index)" })
                    }
                    #expect(try await watcher.messages(20).map(\.seq) == Array(1...20))
                    let atWeb = try await web.messages(20, room: "ops").compactMap { $0["seq"].int }
                    #expect(atWeb == Array(1...20))
                    // Presence is shared: the gRPC watcher on instance 1 is seen from instance 0.
                    let presence = try await client.getPresence(.with { $0.roomID = "ops" })
                    #expect(presence.users.map(\.userID) == ["watcher", "web"])
                    let user = try await client.getUser(.with { $0.userID = "watcher" })
                    #expect(user.rooms == ["ops"])
                }
                watcher.cancel()
            }
        }
    }

    @Test("concurrent publishers on every instance: every subscriber sees the same gapless order")
    func gaplessOrderAcrossInstances() async throws {
        try await withCluster { servers, _ in
            var subscribers: [TestClient] = []
            for (index, server) in servers.enumerated() {
                for number in 0..<2 {
                    let client = try await TestClient.connect(port: server.port, user: "s\(index)-\(number)")
                    try await client.ack("join", ["room": "busy"])
                    subscribers.append(client)
                }
            }
            let perPublisher = 40
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (index, server) in servers.enumerated() {
                    for number in 0..<2 {
                        group.addTask {
                            let publisher = try await TestClient.connect(port: server.port, user: "p\(index)-\(number)")
                            for count in 0..<perPublisher {
                                try await publisher.ack("message", ["room": "busy", "content": "p\(index)-\(number)-\(count)"])
                            }
                            publisher.close()
                        }
                    }
                }
                try await group.waitForAll()
            }
            let total = perPublisher * 6
            var orders: [[Int]] = []
            for subscriber in subscribers {
                let messages = try await subscriber.messages(total, room: "busy", timeout: .seconds(30))
                orders.append(messages.compactMap { $0["seq"].int })
            }
            for order in orders { #expect(order == Array(1...total)) }
        }
    }

    @Test("Redis restarting mid-traffic: every acked message still reaches every member")
    func redisRestart() async throws {
        try await withCluster(instances: 2) { servers, backends in
            let reader = try await TestClient.connect(port: servers[1].port, user: "reader")
            try await reader.ack("join", ["room": "r"])
            let writer = try await TestClient.connect(port: servers[0].port, user: "writer")
            try await writer.ack("join", ["room": "r"])
            var acked: [Int] = []
            for count in 0..<60 {
                if count == 20 {
                    backends.redis.kill()
                    // Readiness follows: /readyz and the gRPC health check say not serving.
                    try await waitUntil { try await http("GET", servers[0].url("/readyz")).status == 503 }
                    try await withGRPCClient(
                        transport: .http2NIOPosix(target: .ipv4(address: "127.0.0.1", port: servers[0].grpcPort), transportSecurity: .plaintext)
                    ) { grpc in
                        let health = try await Grpc_Health_V1_Health.Client(wrapping: grpc).check(.with { $0.service = "" })
                        #expect(health.status == .notServing)
                    }
                }
                if count == 28 { try await backends.redis.launch() }
                let reply = try await writer.request("message", ["room": "r", "content": "m\(count)", "clientId": "c\(count)"], timeout: .seconds(10))
                if reply["event"].string == "ack", let seq = reply["data"]["seq"].int { acked.append(seq) }
            }
            #expect(acked.count == 60)  // history is in PostgreSQL: posting works without Redis
            let received = try await reader.messages(acked.count, room: "r", timeout: .seconds(30)).compactMap { $0["seq"].int }
            #expect(received == acked)
            // The last message has no successor to reveal a gap: it still arrives (resync).
            let last = try await writer.ack("message", ["room": "r", "content": "after"])
            #expect(try await reader.expect("message")["seq"] == last["seq"])
        }
    }

    @Test("PostgreSQL down: posts fail with unavailable, never a false ack, and succeed once it is back")
    func databaseOutage() async throws {
        try await withCluster(instances: 2, privatePostgres: true) { servers, backends in
            let alice = try await TestClient.connect(port: servers[0].port, user: "alice")
            let bob = try await TestClient.connect(port: servers[1].port, user: "bob")
            try await alice.ack("join", ["room": "r"])
            try await bob.ack("join", ["room": "r"])
            let first = try await alice.ack("message", ["room": "r", "content": "before"])
            try await backends.postgres.stop()
            let failed = try await alice.request("message", ["room": "r", "content": "during", "clientId": "d"], timeout: .seconds(20))
            #expect(failed["event"].string == "error")
            #expect(failed["data"]["code"].string == "unavailable")
            let ready = try await http("GET", servers[0].url("/readyz"))
            #expect(ready.status == 503)
            #expect(ready.json["backends"]["postgres"].string == "down")
            #expect(ready.json["backends"]["redis"].string == "up")

            try await backends.postgres.launch()
            var after: JSON?
            for _ in 0..<40 where after == nil {
                let reply = try await alice.request("message", ["room": "r", "content": "during", "clientId": "d"], timeout: .seconds(10))
                if reply["event"].string == "ack" { after = reply["data"] } else { try await Task.sleep(for: .milliseconds(250)) }
            }
            #expect(after?["seq"].int == 2)
            let seen = try await bob.messages(2, room: "r").compactMap { $0["content"].string }
            #expect(seen == ["before", "during"])
            #expect(first["seq"].int == 1)
            let readyAgain = try await http("GET", servers[1].url("/readyz"))
            #expect(readyAgain.status == 200)
        }
    }

    @Test("SIGKILL of an instance: the others serve on, its users leave in time, its clients resume elsewhere")
    func instanceKilled() async throws {
        try await withHeavyTestLock { try await killAnInstance() }
    }

    @Test("an instance restarted at once under the same name: the users of its previous run still leave")
    func restartUnderSameName() async throws {
        try await withHeavyTestLock {
            let backends = try await ClusterBackends.start()
            defer { backends.stop() }
            let a = try await ServerProcess.start(backends.arguments + ["--instance-id", "alpha"])
            defer { a.kill(SIGKILL) }
            var b = try await ServerProcess.start(backends.arguments + ["--instance-id", "beta"])
            let watcher = try await TestClient.connect(port: a.port, user: "watcher")
            try await watcher.ack("join", ["room": "r"])
            let ghost = try await TestClient.connect(port: b.port, user: "ghost")
            try await ghost.ack("join", ["room": "r"])
            _ = try await watcher.expect("join") { $0["user"].string == "ghost" }
            b.kill(SIGKILL)
            _ = await b.waitForExit(timeout: .seconds(10))
            b = try await ServerProcess.start(backends.arguments + ["--instance-id", "beta"])
            defer { b.kill(SIGKILL) }
            let fresh = try await TestClient.connect(port: b.port, user: "fresh")
            try await fresh.ack("join", ["room": "r"])
            _ = try await watcher.expect("leave", timeout: .seconds(10)) { $0["user"].string == "ghost" }
            let users = try await watcher.ack("presence", ["room": "r"])["users"].array?.compactMap { $0["user"].string }
            #expect(users == ["fresh", "watcher"])
        }
    }

    func killAnInstance() async throws {
        let backends = try await ClusterBackends.start()
        defer { backends.stop() }
        let a = try await ServerProcess.start(backends.arguments)
        let b = try await ServerProcess.start(backends.arguments)
        defer {
            a.kill(SIGKILL)
            b.kill(SIGKILL)
        }
        let watcher = try await TestClient.connect(port: a.port, user: "watcher")
        try await watcher.ack("join", ["room": "r"])
        let victim = try await TestClient.connect(port: b.port, user: "victim")
        try await victim.ack("join", ["room": "r"])
        _ = try await watcher.expect("join") { $0["user"].string == "victim" }
        var lastSeen = 0
        for count in 0..<5 {
            try await watcher.ack("message", ["room": "r", "content": "m\(count)"])
            lastSeen = try await victim.expect("message")["seq"].int ?? lastSeen
        }

        b.kill(SIGKILL)
        let killed = ContinuousClock.now
        // The others keep serving while the victim is away.
        for count in 5..<10 { try await watcher.ack("message", ["room": "r", "content": "m\(count)"]) }
        let left = try await watcher.expect("leave", timeout: .seconds(10)) { $0["user"].string == "victim" }
        let leaveAfter = ContinuousClock.now - killed
        #expect(left["room"].string == "r")
        // TTL 1 s, heartbeat and reaper every 200 ms: 1.2 s plus delivery; 3 s leaves room for a busy machine.
        #expect(leaveAfter < .seconds(3), "leave came \(leaveAfter) after the kill")
        print("cluster: leave arrived \(leaveAfter) after SIGKILL (instance TTL 1 s)")

        // The victim reconnects to the surviving instance and resumes: nothing lost.
        let resumed = try await TestClient.connect(port: a.port, user: "victim")
        try await resumed.ack("join", ["room": "r", "since": lastSeen])
        let replayed = try await resumed.messages(10 - lastSeen, room: "r").compactMap { $0["seq"].int }
        #expect(replayed == Array((lastSeen + 1)...10))
        _ = try await watcher.expect("join") { $0["user"].string == "victim" }
    }
}
