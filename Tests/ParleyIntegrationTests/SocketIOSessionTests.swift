import Logging
import NIOCore
import NIOPosix
@testable import ParleyCore
@testable import ParleyServer
import Testing

/// The Socket.IO session without sockets: packets in through `post`, out through `poll`, time
/// moved by a `ManualClock` (heartbeat, handshake deadline), so the Engine.IO state machine is
/// tested exactly, including the race between a long-poll and a WebSocket probe.
@Suite("Socket.IO sessions with a manual clock")
struct SocketIOSessionTests {
    struct OpenAuthenticator: Authenticator {
        var isOpen: Bool { true }
        func authenticate(token: String?, user: String?) async throws(ParleyError) -> Identity {
            guard let user else { throw ParleyError(.unauthorized, "a user id is required") }
            return Identity(user: user)
        }
    }

    let clock = ManualClock()
    let engine: Engine
    let server: SocketIOServer

    init() {
        var limits = Limits()
        limits.ratePerSecond = 0
        engine = Engine(store: MemoryMessageStore(), broker: MemoryBroker(), presence: MemoryPresenceStore(), limits: limits, clock: clock)
        server = SocketIOServer(
            engine: engine, authenticator: OpenAuthenticator(),
            settings: .init(
                limits: limits, handshakeTimeout: .seconds(10), refreshGrace: .seconds(30), pingInterval: .seconds(25),
                pingTimeout: .seconds(20), clock: clock
            ),
            logger: Logger(label: "test")
        )
    }

    func open() throws -> SocketIOSession {
        server.open(transport: .polling, ticket: try engine.connections.acquire(address: nil), eventLoop: MultiThreadedEventLoopGroup.singleton.any())
    }

    /// The packets of one `GET`, as text.
    func get(_ session: SocketIOSession) async -> [String] {
        guard case .packets(let packets, _) = await session.poll() else { return ["<no poll>"] }
        return packets.map { String(buffer: $0) }
    }

    /// `GET`s until a packet satisfies `predicate`; returns everything received.
    func getUntil(_ session: SocketIOSession, _ predicate: (String) -> Bool) async -> [String] {
        var all: [String] = []
        for _ in 0..<20 {
            all += await get(session)
            if all.contains(where: predicate) { break }
        }
        return all
    }

    func post(_ session: SocketIOSession, _ packets: String...) async {
        #expect(await session.post(packets.map { .text(EngineIOPacket(Substring($0))!) }))
    }

    @Test("a polling session: open packet, CONNECT, acks in order, events closed with the recovery offset")
    func pollingChat() async throws {
        let session = try open()
        let opened = await get(session)
        #expect(opened.count == 1 && opened[0].hasPrefix("0{\"sid\":\"\(session.sid)\",\"upgrades\":[\"websocket\"],\"pingInterval\":25000,\"pingTimeout\":20000"))
        await post(session, "40{\"user\":\"alice\"}")
        let connected = await getUntil(session) { $0.hasPrefix("40") }
        #expect(connected.last?.hasPrefix("40{\"sid\":\"") == true)
        await post(session, "421[\"join\",{\"room\":\"r\"}]", "422[\"message\",{\"room\":\"r\",\"content\":\"hi\"}]")
        let packets = await getUntil(session) { $0.hasPrefix("42[\"message\"") }
        // The join ack, the offset event the join changed, the message ack, then the event
        // closed with where the session now is.
        #expect(packets.count == 4, "\(packets)")
        #expect(packets[0].hasPrefix("431[{\"room\":\"r\",\"seq\":0"))
        #expect(packets[1] == "42[\"parley:offset\",\"r=0\"]")
        #expect(packets[2].hasPrefix("432[{\"id\":"))
        #expect(packets[3].hasPrefix("42[\"message\",{\"id\":") && packets[3].hasSuffix(",\"r=1\"]"))
        session.end()
    }

    @Test("a GET while a WebSocket probes is answered with noop at once, whether it came before the probe or after")
    func probeAndPoll() async throws {
        let session = try open()
        _ = await get(session)
        let probe = SocketIOWebSocketHandler(server: server, admission: .upgrade(session))
        // A long-poll waiting when the probe comes is released with noop.
        async let waiting = get(session)
        for _ in 0..<10_000 where !session.hasWaitingPoll { await Task.yield() }
        #expect(session.hasWaitingPoll)
        session.probe(from: probe)
        #expect(await waiting == ["6"])
        // One sent after the probe (the client had not seen the probe's answer yet): noop too.
        #expect(await get(session) == ["6"])
        session.end()
    }

    @Test("the server pings every pingInterval and ends a session that does not answer within pingTimeout")
    func heartbeat() async throws {
        let session = try open()
        _ = await get(session)
        await post(session, "40{\"user\":\"alice\"}")
        _ = await getUntil(session) { $0.hasPrefix("40") }
        clock.advance(by: .seconds(25))
        #expect(await get(session) == ["2"])
        await post(session, "3")
        clock.advance(by: .seconds(20))
        #expect(!session.isEnded)
        clock.advance(by: .seconds(5))
        #expect(await get(session) == ["2"])
        // No pong this time.
        clock.advance(by: .seconds(20))
        #expect(session.isEnded)
        #expect(server.session(session.sid) == nil)
    }

    @Test("no CONNECT within the handshake timeout: the transport is closed")
    func handshakeTimeout() async throws {
        let session = try open()
        _ = await get(session)
        clock.advance(by: .seconds(10))
        #expect(await get(session) == ["1"])
        #expect(session.isEnded)
    }

    @Test("a recovery CONNECT rejoins the offset's rooms from their positions and keeps the pid")
    func recovery() async throws {
        let alice = try open()
        _ = await get(alice)
        await post(alice, "40{\"user\":\"alice\"}", "421[\"join\",{\"room\":\"r\"}]")
        for content in ["a", "b", "c"] { await post(alice, "42[\"message\",{\"room\":\"r\",\"content\":\"\(content)\"}]") }
        _ = await getUntil(alice) { $0.contains("\"c\"") }
        let bob = try open()
        _ = await get(bob)
        await post(bob, "40{\"user\":\"bob\",\"pid\":\"old\",\"offset\":\"r=1\"}")
        let packets = await getUntil(bob) { $0.hasPrefix("40") }
        #expect(packets.last?.contains("\"pid\":\"old\"") == true)
        let replayed = packets.filter { $0.hasPrefix("42[\"message\"") }
        #expect(replayed.count == 2 && replayed[0].hasSuffix(",\"r=2\"]") && replayed[1].hasSuffix(",\"r=3\"]"), "\(packets)")
        alice.end()
        bob.end()
    }

    @Test("a POST of more commands than may wait is answered once they are served: the client cannot queue without bound")
    func backpressure() async throws {
        let session = try open()
        _ = await get(session)
        await post(session, "40{\"user\":\"alice\"}", "420[\"join\",{\"room\":\"r\"}]")
        _ = await getUntil(session) { $0.hasPrefix("430[") }
        let count = 3 * Connection.maxQueuedCommands
        let flood = (1...count).map { "42\($0)[\"message\",{\"room\":\"r\",\"content\":\"m\($0)\"}]" }
        #expect(await session.post(flood.map { .text(EngineIOPacket(Substring($0))!) }))
        #expect(!session.isPaused)
        var acks = 0
        for _ in 0..<50 where acks < count {
            acks += await get(session).filter { $0.hasPrefix("43") }.count
        }
        #expect(acks == count)
        session.end()
    }

    @Test("thousands of mutated Engine.IO and Socket.IO packets: each parsed or refused, sessions end or serve on, nothing crashes")
    func fuzzedPackets() async throws {
        var mutator = Mutator(random: SeededRandom(seed: 0x50C1_E710))
        let valid = [
            "40{\"user\":\"alice\"}", "421[\"join\",{\"room\":\"r\"}]", "422[\"message\",{\"room\":\"r\",\"content\":\"hi @bob\"}]",
            "42[\"typing\",{\"room\":\"r\",\"typing\":true}]", "423[\"search\",{\"text\":\"hi\"}]", "424[\"rooms\",{}]",
            "425[\"dm\",{\"user\":\"bob\"}]", "451-6[\"message\",{\"_placeholder\":true,\"num\":0}]", "41", "3", "2", "6", "5",
            "40/admin,", "43/x,7[]",
        ]
        var session = try open()
        _ = await get(session)
        for round in 0..<3000 {
            var text = mutator.random.pick(valid)
            if mutator.random.chance(0.7) { text = mutator.mutate(text) }
            // The parsers alone: never a crash, whatever the text.
            _ = try? SocketIOPacket(Substring(text.dropFirst()))
            _ = EngineIOPacket.payload(text)
            if let packet = EngineIOPacket(Substring(text)) {
                _ = await session.post([.text(packet)])
            } else {
                _ = await session.post([.binary(.init([1, 2, 3]))])
            }
            if session.isEnded || round % 200 == 0 {
                session.end()
                session = try open()
                _ = await get(session)
            }
        }
        session.end()
        // The server serves on: a new session chats.
        let fresh = try open()
        _ = await get(fresh)
        await post(fresh, "40{\"user\":\"zed\"}", "421[\"join\",{\"room\":\"after\"}]")
        let packets = await getUntil(fresh) { $0.hasPrefix("431[") }
        #expect(packets.contains { $0.hasPrefix("431[{\"room\":\"after\"") })
        fresh.end()
    }

    @Test("socket.io-parser's encodings parse; anything else is refused")
    func packets() throws {
        let event = try SocketIOPacket("2[\"join\",{\"room\":\"r\"}]")
        #expect(event.kind == .event && event.id == nil && event.namespace == "/" && event.event?.name == "join")
        let ack = try SocketIOPacket("2/admin,12[\"x\"]")
        #expect(ack.namespace == "/admin" && ack.id == 12)
        let binary = try SocketIOPacket("51-7[\"m\",{\"_placeholder\":true,\"num\":0}]")
        #expect(binary.kind == .binaryEvent && binary.attachments == 1 && binary.id == 7)
        #expect(try SocketIOPacket("0").kind == .connect)
        #expect(try SocketIOPacket("0{\"token\":\"t\"}").payload is [String: Any])
        for bad in ["", "9", "2", "2{}", "2[]", "2[1]", "0[]", "1{}", "4{}", "5[\"x\"]", "2[\"x\"", "2123456789012345678[\"x\"]"] {
            #expect(throws: SocketIOPacket.Invalid.self, "\(bad)") { try SocketIOPacket(Substring(bad)) }
        }
        #expect(EngineIOPacket.payload("4abc\u{1E}2\u{1E}bAQID") == [.text(.message("abc")), .text(.ping("")), .binary(.init([1, 2, 3]))])
        #expect(EngineIOPacket.payload("7") == nil)
    }

    @Test("recovery offsets follow joins (from since), messages and leaves; bad offsets are refused")
    func offsets() {
        var writer = SocketIOWriter()
        var packets: [ByteBuffer] = []
        writer.pendingSince["b"] = 3
        for event in [ServerEvent.message(.init(id: "1", room: "a", seq: 5, user: "u", content: "x", timestamp: .now, clientId: nil))] {
            writer.packets(SocketIOFrames.shared.encode(event), into: &packets)
        }
        writer.packets(SocketIOFrames.shared.encode(.joined(.init(room: "b", seq: 9, users: [], online: 0, hasMore: false)), id: nil)!, into: &packets)
        #expect(writer.offset == "a=5,b=3")
        writer.packets(SocketIOFrames.shared.encode(.left(room: "a"), id: nil)!, into: &packets)
        #expect(writer.offset == "b=3")
        #expect(packets.map { String(buffer: $0) }.last == "42[\"parley:offset\",\"b=3\"]")
        let limits = Limits()
        #expect(SocketIOWriter.parseOffset("a=1,b.c=20", limits: limits) == ["a": 1, "b.c": 20])
        #expect(SocketIOWriter.parseOffset("", limits: limits) == [:])
        for bad in ["a", "a=", "a=-1", "a=1,a=2", "no room=1", "a=1,,b=2", "a=x"] {
            #expect(SocketIOWriter.parseOffset(bad, limits: limits) == nil, "\(bad)")
        }
    }
}
