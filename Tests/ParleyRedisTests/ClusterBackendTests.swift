import Foundation
import Logging
import NIOCore
import ParleyCore
import Synchronization
import Testing

@testable import ParleyRedis

@Suite("Broker codec")
struct BrokerCodecTests {
    @Test("every event survives a round trip, and garbage decodes to nil")
    func roundTrip() {
        let events: [ServerEvent] = [
            .message(Message(id: "01J", room: "r:1", seq: 42, user: "zoé", content: "héllo \"x\"\n👍", timestamp: Timestamp(milliseconds: 1_700_000_000_123), clientId: "c")),
            .message(Message(id: "01K", room: "r", seq: 1, user: "u", content: "", timestamp: Timestamp(milliseconds: 1), clientId: nil)),
            .join(room: "r", user: "a", timestamp: Timestamp(milliseconds: 5)),
            .leave(room: "r", user: "a", timestamp: Timestamp(milliseconds: 6)),
            .typing(room: "r", user: "a", typing: true),
            .typing(room: "r", user: "a", typing: false),
            .read(room: "r", user: "a", seq: 9),
            .presence(room: "big", online: 1234, joined: ["a", "zoé"], left: []),
            .presence(room: "big", online: 0, joined: [], left: ["b"]),
            .notify(user: "bob", kind: .direct, message: Message(id: "01L", room: "dm:alice:bob", seq: 3, user: "alice", content: "psst", timestamp: Timestamp(milliseconds: 7), clientId: nil)),
            .ownRead(user: "bob", room: "dm:alice:bob", seq: 12),
            .notify(user: "zoé", kind: .mention, message: Message(id: "01M", room: "r", seq: 4, user: "a", content: "@zoé", timestamp: Timestamp(milliseconds: 8), clientId: "k")),
            .message(Message(id: "01N", room: "r", seq: 5, user: "a", content: "👍", timestamp: Timestamp(milliseconds: 9), clientId: "k", kind: .react, target: "01J")),
            .message(Message(id: "01O", room: "r", seq: 6, user: "a", content: "", timestamp: Timestamp(milliseconds: 9), clientId: nil, kind: .delete, target: "01J")),
            .message({
                var row = Message(id: "01R", room: "r", seq: 9, user: "mod", content: "spam", timestamp: Timestamp(milliseconds: 9), clientId: nil, kind: .mute, target: "bob")
                row.until = Timestamp(milliseconds: 60_009)
                return row
            }()),
            .call(CallSignal(
                call: "c:a:s1:b:1:0:n:ff", kind: .ring, from: "a", fromSession: "s1", to: "b", video: true,
                iceServers: [ICEServer(urls: ["stun:x:3478"]), ICEServer(urls: ["turn:x:3478", "turns:x:5349"], username: "1:b", credential: "c2VjcmV0")]
            )),
            .call(CallSignal(call: "c", kind: .offer, from: "a", fromSession: "s1", to: "b", toSession: "s2", data: "v=0\r\n")),
            .call(CallSignal(call: "c", kind: .answered, from: "b", fromSession: "s2", to: "b", exceptSession: "s2")),
            .message(Message(id: "01S", room: "r", seq: 10, user: "mod", content: "", timestamp: Timestamp(milliseconds: 9), clientId: nil, kind: .unban, target: "bob")),
            .message(Message(id: "01P", room: "r", seq: 7, user: "b", content: "yes", timestamp: Timestamp(milliseconds: 9), clientId: nil, replyTo: "01J")),
            .message(Message(id: "01Q", room: "r", seq: 8, user: "b", content: "yes", timestamp: Timestamp(milliseconds: 9), clientId: "c", replyTo: "01J")
                .quoting(Message(id: "01J", room: "r", seq: 1, user: "zoé", content: "héllo", timestamp: Timestamp(milliseconds: 1), clientId: nil))),
        ]
        for event in events { #expect(BrokerCodec.decode(BrokerCodec.encode(event)) == event) }
        #expect(BrokerCodec.decode(ByteBuffer(string: "{\"event\":1}")) == nil)
        var truncated = BrokerCodec.encode(events[0])
        truncated.moveWriterIndex(to: truncated.writerIndex - 1)
        #expect(BrokerCodec.decode(truncated) == nil)
    }
}

/// Records what a broker hands to its receiver.
final class RecordingReceiver: BrokerReceiver {
    let events = Mutex<[ServerEvent]>([])
    let resyncs = Mutex<[String]>([])

    func receive(_ event: ServerEvent) { events.withLock { $0.append(event) } }
    func resync(room: String) async { resyncs.withLock { $0.append(room) } }

    func waitFor(timeout: Duration = .seconds(5), _ condition: (RecordingReceiver) -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if condition(self) { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return condition(self)
    }
}

/// Shut until opened: a test instance's presence events are refused meanwhile.
final class PublishGate: Sendable {
    private let shut = Mutex(true)
    var isShut: Bool { shut.withLock { $0 } }
    func open() { shut.withLock { $0 = false } }
}

/// A client, subscriber, broker and presence of one instance, running until `stop`.
struct TestInstance {
    let client: RedisClient
    let subscriber: RedisSubscriber
    let broker: RedisBroker
    let presence: RedisPresence
    let receiver = RecordingReceiver()
    let task: Task<Void, Never>

    /// `commandTimeout` is also how long a command waits for the first connection: 30 s by
    /// default, as a full suite on a loaded 2-core CI machine once took more than 5 s to connect.
    /// Tests of failures give a short one.
    /// `failingPublishes`: how many presence events the instance's handler refuses (throws for)
    /// before it publishes them, as a broker does when Redis does not answer in time.
    /// `gate`: while it is shut, the handler refuses every presence event.
    init(
        _ server: RedisServerProcess, id: String, ttl: Duration = .seconds(5), runPresence: Bool = true,
        commandTimeout: Duration = .seconds(30), failingPublishes: Int = 0, gate: PublishGate? = nil
    ) {
        var configuration = server.configuration
        configuration.commandTimeout = commandTimeout
        let client = RedisClient(configuration: configuration)
        let subscriber = RedisSubscriber(configuration: server.configuration)
        var brokerConfiguration = RedisBroker.Configuration()
        brokerConfiguration.resyncInterval = nil
        let broker = RedisBroker(client: client, subscriber: subscriber, configuration: brokerConfiguration, logger: Logger(label: "test"))
        var presenceConfiguration = RedisPresence.Configuration(instanceID: id)
        presenceConfiguration.instanceTTL = ttl
        presenceConfiguration.heartbeatInterval = .milliseconds(100)
        let presence = RedisPresence(client: client, configuration: presenceConfiguration, logger: Logger(label: "test"))
        broker.attach(receiver)
        let refusals = Mutex(failingPublishes)
        presence.onEvent { event in
            if refusals.withLock({ count in defer { count -= 1 }; return count > 0 }) || gate?.isShut == true {
                throw RedisError(.timeout, "refused by the test")
            }
            try await broker.publish(event)
        }
        (self.client, self.subscriber, self.broker, self.presence) = (client, subscriber, broker, presence)
        task = Task {
            await withDiscardingTaskGroup { group in
                group.addTask { await client.run() }
                group.addTask { await subscriber.run() }
                group.addTask { try? await broker.run() }
                if runPresence { group.addTask { try? await presence.run() } }
            }
        }
    }

    func stop() async {
        task.cancel()
        await task.value
    }

    /// Waits until Redis counts `count` subscribers on the room's channel.
    func waitForSubscribers(room: String, count: Int = 1) async throws {
        for _ in 0..<500 {
            let reply = try? await client.send("PUBSUB", "NUMSUB", broker.channel(room: room))
            if reply?.array?.last?.int == Int64(count) { return }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw RedisError(.timeout, "no subscriber on \(room)")
    }
}

@Suite("Redis broker and presence against a real redis-server", .enabled(if: RedisServerProcess.isAvailable), .timeLimit(.minutes(1)))
struct ClusterBackendTests {
    func message(_ seq: Int64, room: String = "r") -> ServerEvent {
        .message(Message(id: "m\(seq)", room: room, seq: seq, user: "u", content: "c\(seq)", timestamp: Timestamp(milliseconds: seq), clientId: nil))
    }

    @Test("events reach only the instances interested in the room, which resync on subscribing")
    func brokerRoutesByInterest() async throws {
        try await withRedisServer { server in
            let a = TestInstance(server, id: "a")
            let b = TestInstance(server, id: "b")
            try await b.broker.setInterest(room: "r", true)
            try await a.waitForSubscribers(room: "r")
            #expect(await b.receiver.waitFor { $0.resyncs.withLock { $0 }.contains("r") })
            try await a.broker.publish(message(1))
            try await a.broker.publish(message(1, room: "other"))
            try await a.broker.publish(.typing(room: "r", user: "x", typing: true))
            #expect(await b.receiver.waitFor { $0.events.withLock { $0.count } == 2 })
            #expect(b.receiver.events.withLock { $0 } == [message(1), .typing(room: "r", user: "x", typing: true)])
            #expect(a.receiver.events.withLock { $0 }.isEmpty)

            // Interest counts up and down; at zero the channel is left.
            try await b.broker.setInterest(room: "r", true)
            try await b.broker.setInterest(room: "r", false)
            #expect(b.broker.subscribedRooms == ["r"])
            try await b.broker.setInterest(room: "r", false)
            #expect(b.broker.subscribedRooms.isEmpty)
            for _ in 0..<100 where await b.subscriber.subscriptionCount > 0 { try await Task.sleep(for: .milliseconds(10)) }
            try await a.broker.publish(message(2))
            try await Task.sleep(for: .milliseconds(100))
            #expect(b.receiver.events.withLock { $0.count } == 2)
            await a.stop()
            await b.stop()
        }
    }

    @Test("after Redis restarts, each subscribed room is resynced once live again")
    func brokerResyncsAfterReconnect() async throws {
        try await withRedisServer { server in
            let b = TestInstance(server, id: "b")
            try await b.broker.setInterest(room: "r", true)
            #expect(await b.receiver.waitFor { $0.resyncs.withLock { $0.count } >= 1 })
            let before = b.receiver.resyncs.withLock { $0.count }
            server.kill()
            try await server.launch()
            #expect(await b.receiver.waitFor { $0.resyncs.withLock { $0.count } > before })
            let a = TestInstance(server, id: "a")
            try await a.waitForSubscribers(room: "r")
            try await a.broker.publish(message(1))
            #expect(await b.receiver.waitFor { $0.events.withLock { $0 } == [message(1)] })
            await a.stop()
            await b.stop()
        }
    }

    @Test("presence is shared: first and last session are decided across instances")
    func presenceAcrossInstances() async throws {
        try await withRedisServer { server in
            let a = TestInstance(server, id: "a")
            let b = TestInstance(server, id: "b")
            #expect(try await a.presence.add(room: "r", user: "ann", session: "a-1", at: Timestamp(milliseconds: 1000)))
            #expect(try await b.presence.add(room: "r", user: "ann", session: "b-1", at: .now) == false)
            #expect(try await b.presence.add(room: "r", user: "bob", session: "b-2", at: Timestamp(milliseconds: 2000)))
            #expect(try await a.presence.add(room: "s", user: "ann", session: "a-1", at: .now))
            #expect(try await b.presence.members(room: "r") == [
                PresenceEntry(user: "ann", since: Timestamp(milliseconds: 1000)), PresenceEntry(user: "bob", since: Timestamp(milliseconds: 2000)),
            ])
            #expect(try await b.presence.rooms(user: "ann") == ["r", "s"])
            #expect(try await a.presence.onlineCounts() == ["r": 2, "s": 1])
            #expect(try await a.presence.remove(room: "r", user: "ann", session: "a-1") == false)
            #expect(try await b.presence.remove(room: "r", user: "ann", session: "b-1"))
            #expect(try await b.presence.remove(room: "r", user: "ann", session: "b-1") == false)
            #expect(try await a.presence.rooms(user: "ann") == ["s"])
            #expect(try await a.presence.onlineCounts() == ["r": 1, "s": 1])

            // Racing sessions of one user on two instances: exactly one first, one last.
            let firsts = try await withThrowingTaskGroup(of: Bool.self) { group in
                for index in 0..<20 {
                    let presence = index % 2 == 0 ? a.presence : b.presence
                    group.addTask { try await presence.add(room: "race", user: "cy", session: "s\(index)", at: .now) }
                }
                return try await group.reduce(into: 0) { $0 += $1 ? 1 : 0 }
            }
            #expect(firsts == 1)
            let lasts = try await withThrowingTaskGroup(of: Bool.self) { group in
                for index in 0..<20 {
                    let presence = index % 2 == 0 ? a.presence : b.presence
                    group.addTask { try await presence.remove(room: "race", user: "cy", session: "s\(index)") }
                }
                return try await group.reduce(into: 0) { $0 += $1 ? 1 : 0 }
            }
            #expect(lasts == 1)
            await a.stop()
            await b.stop()
        }
    }

    @Test("a dead instance's users are reaped once, by one survivor, with leave events")
    func reaperRemovesDeadInstance() async throws {
        try await withRedisServer { server in
            // Long TTLs for the live ones: a loaded machine must not make them look dead.
            let a = TestInstance(server, id: "a", ttl: .seconds(10))
            let b = TestInstance(server, id: "b", ttl: .seconds(10))
            try await a.broker.setInterest(room: "r", true)
            try await b.waitForSubscribers(room: "r")
            // "dead" never heartbeats: its entries expire with the TTL its first add set (long
            // enough that a loaded machine still sees them alive for the next few calls).
            let dead = TestInstance(server, id: "dead", ttl: .milliseconds(1500), runPresence: false)
            #expect(try await dead.presence.add(room: "r", user: "zed", session: "dead-1", at: .now))
            #expect(try await dead.presence.add(room: "r", user: "ann", session: "dead-2", at: .now))
            #expect(try await a.presence.add(room: "r", user: "ann", session: "a-1", at: .now) == false)
            let started = ContinuousClock.now
            #expect(await a.receiver.waitFor { $0.events.withLock { $0 }.contains { if case .leave(_, "zed", _) = $0 { true } else { false } } })
            let elapsed = ContinuousClock.now - started
            #expect(elapsed < .seconds(10))
            try await Task.sleep(for: .milliseconds(300))
            let leaves = a.receiver.events.withLock { $0 }.filter { if case .leave = $0 { true } else { false } }
            #expect(leaves.count == 1)  // ann is still present through a-1
            #expect(try await a.presence.members(room: "r").map(\.user) == ["ann"])
            await dead.stop()
            await a.stop()
            await b.stop()
        }
    }

    /// Ann joins room `r` at `a` (which `b` follows), and her removal fails at `a` while Redis
    /// is stopped; Redis runs again when this returns, and `a` retries the removal.
    func removeAnnWhileRedisIsStopped(_ server: RedisServerProcess, at a: TestInstance, watchedBy b: TestInstance) async throws {
        try await b.broker.setInterest(room: "r", true)
        try await a.waitForSubscribers(room: "r")
        #expect(try await a.presence.add(room: "r", user: "ann", session: "a-1", at: .now))
        server.signal(SIGSTOP)
        await #expect(throws: RedisError.self) { try await a.presence.remove(room: "r", user: "ann", session: "a-1") }
        server.signal(SIGCONT)
    }

    /// `a`'s command timeout is what makes its removal fail while Redis is stopped; a second
    /// is short enough for the test and long enough that a loaded machine's heartbeats after
    /// `SIGCONT` do not time out as well (300 ms did, once, at the start of a full CI run).
    @Test("a removal that failed while Redis was away is retried and emits its leave", arguments: [0, 2])
    func retriesFailedRemoval(failingPublishes: Int) async throws {
        try await withRedisServer { server in
            let a = TestInstance(server, id: "a", commandTimeout: .seconds(1), failingPublishes: failingPublishes)
            let b = TestInstance(server, id: "b", ttl: .seconds(30))
            try await removeAnnWhileRedisIsStopped(server, at: a, watchedBy: b)
            // With failing publishes, Redis reports the leave once and `a` keeps it until a
            // later heartbeat publishes it.
            #expect(await b.receiver.waitFor(timeout: .seconds(30)) { $0.events.withLock { $0 }.contains { if case .leave(_, "ann", _) = $0 { true } else { false } } })
            #expect(try await b.presence.members(room: "r").isEmpty)
            #expect(a.presence.owedEventCount == 0)
            let leaves = b.receiver.events.withLock { $0 }.filter { if case .leave = $0 { true } else { false } }
            #expect(leaves.count == 1)
            await a.stop()
            await b.stop()
        }
    }

    @Test("a kept leave whose user came back before it could be published is dropped, not published late")
    func dropsStaleOwedLeave() async throws {
        try await withRedisServer { server in
            let gate = PublishGate()
            let a = TestInstance(server, id: "a", commandTimeout: .seconds(1), gate: gate)
            let b = TestInstance(server, id: "b", ttl: .seconds(30))
            try await removeAnnWhileRedisIsStopped(server, at: a, watchedBy: b)
            // The retried removal reports the leave; its publish is refused, so `a` keeps it.
            let deadline = ContinuousClock.now + .seconds(30)
            while a.presence.owedEventCount == 0, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
            #expect(a.presence.owedEventCount == 1)
            // Ann comes back through b before a can publish: her leave no longer holds.
            #expect(try await b.presence.add(room: "r", user: "ann", session: "b-1", at: .now))
            gate.open()
            while a.presence.owedEventCount > 0, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
            #expect(a.presence.owedEventCount == 0)
            #expect(!b.receiver.events.withLock { $0 }.contains { if case .leave = $0 { true } else { false } })
            #expect(try await b.presence.members(room: "r").map(\.user) == ["ann"])
            await a.stop()
            await b.stop()
        }
    }

    @Test("a dead instance's leaves that could not be published are published with a later heartbeat")
    func republishesReapedLeaves() async throws {
        try await withRedisServer { server in
            let a = TestInstance(server, id: "a", ttl: .seconds(30), failingPublishes: 1)
            let b = TestInstance(server, id: "b", ttl: .seconds(30), runPresence: false)
            try await b.broker.setInterest(room: "r", true)
            try await a.waitForSubscribers(room: "r")
            let dead = TestInstance(server, id: "dead", ttl: .milliseconds(500), runPresence: false)
            #expect(try await dead.presence.add(room: "r", user: "zed", session: "dead-1", at: .now))
            // Only `a` reaps (b runs no presence): its first publish fails, a later one delivers.
            #expect(await b.receiver.waitFor(timeout: .seconds(30)) { $0.events.withLock { $0 }.contains { if case .leave(_, "zed", _) = $0 { true } else { false } } })
            #expect(a.presence.owedEventCount == 0)
            await dead.stop()
            await a.stop()
            await b.stop()
        }
    }

    @Test("an instance whose presence Redis lost registers its sessions again")
    func reRegistersAfterRedisRestart() async throws {
        try await withRedisServer { server in
            let a = TestInstance(server, id: "a")
            #expect(try await a.presence.add(room: "r", user: "ann", session: "a-1", at: .now))
            server.kill()
            try await server.launch()
            let deadline = ContinuousClock.now + .seconds(20)
            var members: [PresenceEntry] = []
            while members.isEmpty, ContinuousClock.now < deadline {
                members = (try? await a.presence.members(room: "r")) ?? []
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(members.map(\.user) == ["ann"])
            await a.stop()
        }
    }
}
