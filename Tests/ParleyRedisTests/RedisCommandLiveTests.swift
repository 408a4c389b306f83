import NIOCore
import Testing

@testable import ParleyRedis

@Suite("Commands against a real redis-server", .enabled(if: RedisServerProcess.isAvailable), .timeLimit(.minutes(1)))
struct RedisCommandLiveTests {
    @Test(arguments: [RedisConfiguration.ProtocolVersion.resp2, .resp3])
    func roundTrips(version: RedisConfiguration.ProtocolVersion) async throws {
        try await withRedisServer { server in
            var configuration = server.configuration
            configuration.protocolVersion = version
            let connection = try await RedisConnection.connect(configuration: configuration)
            #expect(await connection.protocolVersion == version)
            #expect(try await connection.send("SET", "greeting", "hello").string == "OK")
            #expect(try await connection.send("GET", "greeting").string == "hello")
            #expect(try await connection.send("GET", "missing").isNull)
            #expect(try await connection.send("INCR", "counter").int == 1)
            #expect(try await connection.send("INCRBY", "counter", 41).int == 42)
            #expect(try await connection.send("HSET", "user:1", "name", "Ada", "lang", "swift").int == 2)
            let hash = try await connection.send("HGETALL", "user:1")
            #expect(hash.stringMap == ["name": "Ada", "lang": "swift"])
            if version == .resp3 {
                guard case .map = hash.value else { throw RedisError(.protocolError, "HGETALL not a map in RESP3") }
            }
            #expect(try await connection.send("EXPIRE", "greeting", 100).int == 1)
            let ttl = try await connection.send("TTL", "greeting").int ?? -1
            #expect((1...100).contains(ttl))
            let binary = [UInt8](0...255) + [13, 10]
            _ = try await connection.send("SET", "binary", binary)
            #expect(try await connection.send("GET", "binary").bytes.map { Array($0.readableBytesView) } == binary)
            let error = await #expect(throws: RedisError.self) { try await connection.send("HGET", "greeting", "f") }
            #expect(error?.serverErrorPrefix == "WRONGTYPE")
            #expect(try await connection.send("PING").string == "PONG")  // still usable after an error
            await connection.close()
        }
    }

    @Test func pipelinesAThousandCommands() async throws {
        try await withRedisServer { server in
            let connection = try await RedisConnection.connect(configuration: server.configuration)
            let results = await connection.pipeline((0..<1000).map { _ in RESPCommand("INCR", "n") })
            #expect(try results.map { try $0.get().int } == (1...1000).map { Int64($0) })

            // Many tasks sending at once: each still gets its own reply.
            try await withThrowingTaskGroup(of: (Int, String?).self) { group in
                for index in 0..<1000 {
                    group.addTask { (index, try await connection.send("ECHO", "m\(index)").string) }
                }
                var matched = 0
                for try await (index, echoed) in group where echoed == "m\(index)" { matched += 1 }
                #expect(matched == 1000)
            }
            await connection.close()
        }
    }

    @Test(arguments: [RedisConfiguration.ProtocolVersion.resp2, .resp3])
    func authentication(version: RedisConfiguration.ProtocolVersion) async throws {
        try await withRedisServer(password: "s3cret") { server in
            var good = server.configuration
            good.protocolVersion = version
            let connection = try await RedisConnection.connect(configuration: good)
            #expect(try await connection.send("PING").string == "PONG")

            // An ACL user with its own password.
            _ = try await connection.send("ACL", "SETUSER", "alice", "on", ">alicepw", "~*", "+@all")
            var alice = good
            alice.username = "alice"
            alice.password = "alicepw"
            let aliceConnection = try await RedisConnection.connect(configuration: alice)
            #expect(try await aliceConnection.send("ACL", "WHOAMI").string == "alice")
            await aliceConnection.close()
            await connection.close()

            var wrong = good
            wrong.password = "wrong"
            let refused = await #expect(throws: RedisError.self) { try await RedisConnection.connect(configuration: wrong) }
            #expect(refused?.code == .authenticationFailed)

            var none = good
            none.password = nil
            if version == .resp3 {
                let error = await #expect(throws: RedisError.self) { try await RedisConnection.connect(configuration: none) }
                #expect(error?.code == .authenticationFailed)
            } else {
                let anonymous = try await RedisConnection.connect(configuration: none)
                let error = await #expect(throws: RedisError.self) { try await anonymous.send("GET", "x") }
                #expect(error?.serverErrorPrefix == "NOAUTH")
                await anonymous.close()
            }
        }
    }

    @Test func selectsTheDatabaseFromTheURL() async throws {
        try await withRedisServer { server in
            let inThree = try await RedisConnection.connect(
                configuration: try RedisConfiguration(url: "redis://127.0.0.1:\(server.port)/3")
            )
            _ = try await inThree.send("SET", "where", "three")
            let inZero = try await RedisConnection.connect(configuration: server.configuration)
            #expect(try await inZero.send("GET", "where").isNull)
            _ = try await inZero.send("SELECT", 3)
            #expect(try await inZero.send("GET", "where").string == "three")
            await inThree.close()
            await inZero.close()
        }
    }

    @Test func aTimedOutCommandDoesNotShiftLaterReplies() async throws {
        try await withRedisServer { server in
            let connection = try await RedisConnection.connect(configuration: server.configuration)
            let error = await #expect(throws: RedisError.self) {
                try await connection.send(RESPCommand("BLPOP", "empty", "0.3"), timeout: .milliseconds(50))
            }
            #expect(error?.code == .timeout)
            #expect(try await connection.send("ECHO", "after").string == "after")
            await connection.close()
        }
    }

    @Test func connectingToAClosedPortFails() async throws {
        // A port that is bound but not listening refuses connections, and stays ours for the
        // whole test: a port merely released could be taken by a server another test starts.
        let reserved = try ReservedPort()
        defer { reserved.release() }
        let error = await #expect(throws: RedisError.self) {
            try await RedisConnection.connect(configuration: RedisConfiguration(host: "127.0.0.1", port: reserved.port))
        }
        #expect(error?.code == .connectionFailed)
    }

    @Test func clientWaitsForItsFirstConnectionThenServes() async throws {
        try await withRedisServer { server in
            // The first connection may take seconds on a loaded CI machine: the command waits
            // for it (the default 5 s ran out once under a full suite).
            var configuration = server.configuration
            configuration.commandTimeout = .seconds(30)
            configuration.connectTimeout = .seconds(30)
            let client = RedisClient(configuration: configuration)
            try await withRunning(client) {
                // Sent at once, before the connection is up: it waits for it.
                #expect(try await client.send("PING").string == "PONG")
                let results = try await client.pipeline([RESPCommand("SET", "a", 1), RESPCommand("GET", "a")])
                #expect(try results.last?.get().int == 1)
            }
            let error = await #expect(throws: RedisError.self) { try await client.send("PING") }
            #expect(error?.code == .unavailable)
        }
    }

    @Test func clientWithoutAServerReportsUnavailableAndKeepsTrying() async throws {
        var configuration = RedisConfiguration(host: "127.0.0.1", port: try await RedisServerProcess.freePort())
        configuration.commandTimeout = .milliseconds(300)
        configuration.reconnect = RedisBackoff(initialDelay: .milliseconds(10), maximumDelay: .milliseconds(40))
        let events = EventRecorder()
        let client = RedisClient(configuration: configuration, onEvent: events.record)
        try await withRunning(client) {
            let error = await #expect(throws: RedisError.self) { try await client.send("PING") }
            #expect(error?.code == .unavailable)
            try await events.wait(for: 3) {
                if case .connectFailed = $0 { return true }
                return false
            }
        }
    }
}
