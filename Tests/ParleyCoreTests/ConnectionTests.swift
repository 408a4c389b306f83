import Foundation
import NIOCore
@testable import ParleyCore
import Synchronization
import Testing

/// The engine and the connection protocol without sockets, threads of their own or sleeps: a
/// `ManualClock` moves time, a memory store, broker and presence stand in for the backends, and
/// a readable wire format shows exactly what each client was sent, in order.
@Suite("Connection and engine with a manual clock")
struct ConnectionTests {
    /// Frames as short strings: `message r 3 alice hi`, `ack 7 joined r 0 [bob]`, `error 7 bad_request`.
    final class TextFormat: WireFormat {
        func encode(_ event: ServerEvent) -> ByteBuffer {
            switch event {
            case .message(let message): ByteBuffer(string: "\(message.kind.rawValue) \(message.room) \(message.seq) \(message.user) \(message.content)")
            case .join(let room, let user, _): ByteBuffer(string: "join \(room) \(user)")
            case .leave(let room, let user, _): ByteBuffer(string: "leave \(room) \(user)")
            case .typing(let room, let user, let typing): ByteBuffer(string: "typing \(room) \(user) \(typing)")
            case .read(let room, let user, let seq): ByteBuffer(string: "read \(room) \(user) \(seq)")
            case .presence(let room, let online, let joined, let left): ByteBuffer(string: "presence \(room) \(online) +\(joined) -\(left)")
            case .notify(let user, let kind, let message): ByteBuffer(string: "notify \(user) \(kind.rawValue) \(message.room) \(message.seq)")
            case .ownRead(let user, let room, let seq): ByteBuffer(string: "read \(room) \(user) \(seq)")
            case .call(let signal): ByteBuffer(string: "call \(signal.kind.rawValue) \(signal.from)\(signal.data.map { " " + $0 } ?? "")")
            }
        }

        func encode(_ reply: Reply, id: RequestID?) -> ByteBuffer? {
            if case .pong = reply { return ByteBuffer(string: "pong") }
            guard case .number(let id)? = id else { return nil }
            let text = switch reply {
            case .connected(let user, _): "connected \(user)"
            case .joined(let ack): "joined \(ack.room) \(ack.seq) \(ack.users.map(\.user))\(ack.hasMore ? " of \(ack.online)" : "")"
            case .left(let room): "left \(room)"
            case .published(let stored): "published \(stored.message.seq)\(stored.duplicate ? " duplicate" : "")"
            case .callStarted(let start): "calling \(start.iceServers.count)"
            case .signaled: "signaled"
            case .visibility(let visible): "visible \(visible)"
            case .changed(let message): "changed \(message.seq) \(message.content)\(message.deleted ? " deleted" : "") \(message.reactions.map { "\($0.emoji)\($0.users)" })"
            case .typing(let room, let typing): "typing \(room) \(typing)"
            case .read(let room, let seq): "read \(room) \(seq)"
            case .history(let page): "history \(page.messages.map(\.seq)) \(page.hasMore)"
            case .presence(let page): "presence \(page.room) \(page.users.map(\.user))\(page.hasMore ? " of \(page.online)" : "")"
            case .searched(let page): "found \(page.messages.map(\.seq)) \(page.hasMore)"
            case .inbox(let entries): "rooms " + entries.map { "\($0.room):\($0.seq)/\($0.readSeq)/\($0.unread)/\($0.mentions)" }.joined(separator: " ")
            case .pong: "pong"
            }
            return ByteBuffer(string: "ack \(id) \(text)")
        }

        func encode(_ error: ParleyError, id: RequestID?) -> ByteBuffer {
            guard case .number(let id)? = id else { return ByteBuffer(string: "error \(error.code.name)") }
            return ByteBuffer(string: "error \(id) \(error.code.name)")
        }
    }

    /// `alice` in open mode; `alice@<ms>` a token of alice's that expires at that wall time;
    /// `key` an API key.
    struct TestAuthenticator: Authenticator {
        var isOpen: Bool { false }

        func authenticate(token: String?, user: String?) async throws(ParleyError) -> Identity {
            guard let token else { throw ParleyError(.unauthorized, "a token is required") }
            if token == "key" { return Identity(user: "backend", isBackend: true) }
            let parts = token.split(separator: "@")
            return Identity(user: String(parts[0]), expiresAt: parts.count > 1 ? Timestamp(milliseconds: Int64(parts[1])!) : nil)
        }
    }

    let clock = ManualClock()
    let engine: Engine

    init() {
        var limits = Limits()
        limits.ratePerSecond = 2
        limits.rateBurst = 2
        limits.maxOutboxBytes = 4096
        limits.maxConsecutiveBadFrames = 5
        engine = Engine(
            store: MemoryMessageStore(), broker: MemoryBroker(), presence: MemoryPresenceStore(),
            limits: limits, logger: .init(label: "test"), clock: clock
        )
    }

    func connection(
        _ user: String?, moderator: Bool = false, settings: Connection.Settings = .init(transport: "websocket", handshakeTimeout: .seconds(10))
    ) throws -> Connection {
        let connection = Connection(
            engine: engine, authenticator: TestAuthenticator(), format: TextFormat(), settings: settings, clock: clock,
            logger: .init(label: "test")
        )
        try connection.start(identity: user.map { Identity(user: $0, isModerator: moderator) })
        return connection
    }

    /// A WebSocket-like connection of `user` on an engine of its own.
    func open(_ user: String, on engine: Engine) throws -> Connection {
        let connection = Connection(
            engine: engine, authenticator: TestAuthenticator(), format: TextFormat(),
            settings: .init(transport: "websocket", handshakeTimeout: .seconds(10)), clock: clock, logger: .init(label: "test")
        )
        try connection.start(identity: Identity(user: user))
        return connection
    }

    /// Everything queued on the connection since the last call, without waiting.
    func sent(_ connection: Connection) -> [String] {
        var batch: [Outbox.Frame] = []
        _ = connection.outbox.take(into: &batch)
        return batch.map { String(buffer: $0.bytes) }
    }

    // MARK: Edits, deletions, reactions and replies

    @Test("changes reach members live and on resume in the room's order; authors edit within the window; a backend deletes anyone's")
    func changes() async throws {
        let alice = try connection("alice")
        let bob = try connection("bob")
        let carol = try connection("carol")
        for member in [alice, bob] { await member.receive(.join(room: "r", since: nil), id: nil) }
        await alice.receive(.message(room: "r", content: "helo", clientId: nil), id: .number(1))
        #expect(sent(alice) == ["join r bob", "ack 1 published 1", "message r 1 alice helo"])
        #expect(sent(bob) == ["message r 1 alice helo"])
        let id = try await engine.history(Identity(user: "alice"), room: "r", before: nil, after: nil, limit: nil).messages[0].id
        // Bob goes offline; the room changes without him.
        await bob.receive(.leave(room: "r"), id: nil)
        _ = sent(bob)
        _ = sent(alice)
        await alice.receive(.change(room: "r", id: id, action: .edit, content: " hello ", clientId: nil), id: .number(2))
        #expect(sent(alice) == ["ack 2 changed 1 hello []", "edit r 2 alice hello"])
        await carol.receive(.change(room: "r", id: id, action: .react(.toggle), content: "👍", clientId: nil), id: .number(1))
        #expect(sent(carol) == ["ack 1 changed 1 hello [\"👍[\\\"carol\\\"]\"]"])
        #expect(sent(alice) == ["react r 3 carol 👍"])
        // The same reaction again, a stranger's edit, an edit after the window: nothing stored.
        clock.advance(by: .seconds(1))
        await carol.receive(.change(room: "r", id: id, action: .react(.add), content: "👍", clientId: nil), id: .number(2))
        await carol.receive(.change(room: "r", id: id, action: .edit, content: "mine now", clientId: nil), id: .number(3))
        await carol.receive(.change(room: "r", id: id, action: .react(.add), content: "two words", clientId: nil), id: .number(4))
        #expect(sent(carol) == ["ack 2 changed 1 hello [\"👍[\\\"carol\\\"]\"]", "error 3 forbidden", "error 4 bad_request"])
        clock.advance(by: .seconds(24 * 3600 + 1))
        await alice.receive(.change(room: "r", id: id, action: .edit, content: "too late", clientId: nil), id: .number(3))
        #expect(sent(alice) == ["error 3 forbidden"])
        // A reply quotes what it answers; an unknown id is not_found.
        await alice.receive(.message(room: "r", content: "see above", clientId: nil, replyTo: id), id: .number(4))
        clock.advance(by: .seconds(1))
        await alice.receive(.message(room: "r", content: "?", clientId: nil, replyTo: "01UNKNOWN"), id: .number(5))
        #expect(sent(alice) == ["ack 4 published 4", "message r 4 alice see above", "error 5 not_found"])
        // Bob resumes from seq 1: the changes he missed, in order, then live ones.
        await bob.receive(.join(room: "r", since: 1), id: nil)
        #expect(sent(bob) == ["edit r 2 alice hello", "react r 3 carol 👍", "message r 4 alice see above"])
        let page = try await engine.history(Identity(user: "bob"), room: "r", before: nil, after: nil, limit: nil)
        #expect(page.messages[0].content == "hello" && page.messages[0].edited != nil && page.messages[3].quote?.content == "hello")
        // Carol may not delete alice's message; a backend may.
        await carol.receive(.change(room: "r", id: id, action: .delete, content: "", clientId: nil), id: .number(5))
        #expect(sent(carol) == ["error 5 forbidden"])
        let backend = Connection(
            engine: engine, authenticator: TestAuthenticator(), format: TextFormat(),
            settings: .init(transport: "grpc", handshakeTimeout: .seconds(10), backendsMayConnect: true), clock: clock,
            logger: .init(label: "test")
        )
        try backend.start(identity: nil, backend: Identity(user: "backend", isBackend: true))
        await backend.receive(.connect(token: nil, user: "moderator"), id: nil)
        await backend.receive(.change(room: "r", id: id, action: .delete, content: "", clientId: nil), id: .number(1))
        #expect(sent(backend).last == "ack 1 changed 1  deleted []")
        #expect(sent(bob) == ["delete r 5 moderator "])
        let after = try await engine.history(Identity(user: "bob"), room: "r", before: nil, after: nil, limit: nil)
        #expect(after.messages[0].deleted && after.messages[1].content.isEmpty && after.messages[3].quote?.deleted == true)
    }

    @Test("a moderator kicks, mutes and bans: the row reaches the room and its target first, then the target is out; mutes end on time")
    func moderation() async throws {
        let mod = try connection("mod", moderator: true)
        let bob = try connection("bob")
        let carol = try connection("carol")
        for member in [mod, bob, carol] { await member.receive(.join(room: "r", since: nil), id: nil) }
        await bob.receive(.message(room: "r", content: "spam", clientId: nil), id: .number(1))
        let spam = try await engine.history(Identity(user: "mod"), room: "r", before: nil, after: nil, limit: nil).messages[0].id
        for member in [mod, bob, carol] { _ = sent(member) }
        // Only a moderator moderates; a moderator deletes anyone's message.
        await carol.receive(.moderate(room: "r", user: "bob", action: .kick, seconds: nil, reason: nil, clientId: nil), id: .number(1))
        #expect(sent(carol) == ["error 1 forbidden"])
        await mod.receive(.change(room: "r", id: spam, action: .delete, content: "", clientId: nil), id: .number(1))
        #expect(sent(mod) == ["ack 1 changed 1  deleted []", "delete r 2 mod "])
        // A kick: bob sees it, then leaves the room (he may join again).
        await mod.receive(.moderate(room: "r", user: "bob", action: .kick, seconds: nil, reason: "calm down", clientId: nil), id: .number(2))
        #expect(sent(bob) == ["delete r 2 mod ", "kick r 3 mod calm down"])
        #expect(bob.session?.rooms.contains("r") == false)
        #expect(sent(carol).contains("leave r bob"))
        clock.advance(by: .seconds(2))
        await mod.receive(.message(room: "r", content: "rules", clientId: nil), id: nil)
        #expect(sent(bob).isEmpty)
        // A mute for 60 s: bob may join and read, not post, until it ends.
        clock.advance(by: .seconds(2))
        await mod.receive(.moderate(room: "r", user: "bob", action: .mute, seconds: 60, reason: "spam", clientId: nil), id: .number(3))
        await bob.receive(.join(room: "r", since: nil), id: .number(2))
        clock.advance(by: .seconds(1))
        await bob.receive(.message(room: "r", content: "hello?", clientId: nil), id: .number(3))
        #expect(sent(bob) == ["ack 2 joined r 5 [\"bob\", \"carol\", \"mod\"]", "error 3 forbidden"])
        clock.advance(by: .seconds(60))
        await bob.receive(.message(room: "r", content: "sorry", clientId: nil), id: .number(4))
        #expect(sent(bob) == ["ack 4 published 6", "message r 6 bob sorry"])
        // A ban: out at once, no join, no history, until lifted.
        await mod.receive(.moderate(room: "r", user: "bob", action: .ban, seconds: nil, reason: nil, clientId: nil), id: .number(4))
        #expect(bob.session?.rooms.contains("r") == false)
        #expect(sent(bob) == ["ban r 7 mod "])
        clock.advance(by: .seconds(1))
        await bob.receive(.join(room: "r", since: nil), id: .number(5))
        await bob.receive(.history(room: "r", before: nil, after: nil, limit: nil), id: .number(6))
        await bob.receive(.message(room: "r", content: "let me in", clientId: nil), id: .number(7))
        #expect(sent(bob) == ["error 5 forbidden", "error 6 forbidden", "error 7 forbidden"])
        await mod.receive(.moderate(room: "r", user: "bob", action: .unban, seconds: nil, reason: nil, clientId: nil), id: .number(5))
        clock.advance(by: .seconds(1))
        await bob.receive(.join(room: "r", since: 7), id: .number(8))
        #expect(sent(bob).first == "ack 8 joined r 8 [\"bob\", \"carol\", \"mod\"]")
        let rows = try await engine.history(Identity(user: "mod"), room: "r", before: nil, after: nil, limit: nil).messages
        #expect(rows.filter(\.kind.isModeration).map(\.kind) == [.kick, .mute, .ban, .unban])
    }

    // MARK: Calls

    @Test("a call rings every session of the callee, is taken on one, relays SDP between exactly those two sessions, and a third user can do nothing")
    func calls() async throws {
        let alice = try connection("alice")
        let phone = try connection("bob")
        let laptop = try connection("bob")
        let carol = try connection("carol")
        await alice.receive(.ping, id: nil)
        _ = sent(alice)
        let start = try await engine.startCall(alice.session!, callee: "bob", video: false)
        #expect(sent(phone) == ["call ring alice"] && sent(laptop) == ["call ring alice"] && sent(carol).isEmpty)
        // The laptop answers: alice hears of it, the phone stops ringing.
        await laptop.receive(.signal(call: start.call, kind: .accept, data: nil, toSession: nil), id: .number(1))
        #expect(sent(laptop) == ["ack 1 signaled"])
        #expect(sent(alice) == ["call accept bob"] && sent(phone) == ["call answered bob"])
        // SDP goes between alice and the laptop only.
        await alice.receive(.signal(call: start.call, kind: .offer, data: "v=0 offer", toSession: laptop.session!.id), id: .number(2))
        #expect(sent(laptop) == ["call offer alice v=0 offer"] && sent(phone).isEmpty)
        await laptop.receive(.signal(call: start.call, kind: .answer, data: "v=0 answer", toSession: nil), id: nil)
        #expect(sent(alice).contains("call answer bob v=0 answer"))
        // Carol cannot inject or end it, nor can a made-up id; nor may bob send an offer.
        await carol.receive(.signal(call: start.call, kind: .hangup, data: nil, toSession: nil), id: .number(1))
        await carol.receive(.signal(call: start.call + "0", kind: .hangup, data: nil, toSession: nil), id: .number(2))
        #expect(sent(carol) == ["error 1 forbidden", "error 2 not_found"])
        await laptop.receive(.signal(call: start.call, kind: .offer, data: "x", toSession: nil), id: .number(3))
        #expect(sent(laptop) == ["error 3 bad_request"])
        await laptop.receive(.signal(call: start.call, kind: .hangup, data: nil, toSession: nil), id: nil)
        #expect(sent(alice) == ["call hangup bob"])
        // Answered: no missed call later.
        clock.advance(by: .seconds(31))
        #expect(sent(alice).isEmpty && sent(phone).isEmpty)
    }

    @Test("TURN credentials follow the TURN REST scheme: <expiry>:<user>, base64 HMAC-SHA1 with the shared secret")
    func turnCredentials() {
        var ice = ICEConfiguration()
        ice.stun = ["stun:stun.example:3478"]
        ice.turn = ["turn:turn.example:3478"]
        ice.turnSecret = "turn-secret"
        // 1,800,000,000 s plus the 24-hour lifetime.
        let servers = ice.servers(for: "bob", at: Timestamp(milliseconds: 1_800_000_000_000))
        #expect(servers == [
            ICEServer(urls: ["stun:stun.example:3478"]),
            ICEServer(urls: ["turn:turn.example:3478"], username: "1800086400:bob", credential: "gj8z3F2/WAFNjZx3yRlRwsc2Msg="),
        ])
        // A call id is only valid with its signature.
        let id = CallID(caller: "a", callerSession: "s", callee: "b", started: .now, video: false).signed(with: [1, 2, 3])
        #expect(CallID(id, secret: [1, 2, 3])?.callee == "b" && CallID(id, secret: [1, 2, 4]) == nil)
        #expect(CallID(id.replacingOccurrences(of: ":b:", with: ":c:"), secret: [1, 2, 3]) == nil)
    }

    @Test("a call nobody answers ends as missed after 30 s, with a message in the DM; a caller who leaves cancels")
    func missedCall() async throws {
        let alice = try connection("alice")
        let bob = try connection("bob")
        await alice.receive(.call(user: "bob", video: false), id: .number(1))
        #expect(sent(alice) == ["ack 1 calling 0"] && sent(bob) == ["call ring alice"])
        clock.advance(by: .seconds(29))
        #expect(sent(bob).isEmpty)
        clock.advance(by: .seconds(1))
        // The timer's work runs as a task: let it finish (no wall-clock wait).
        var page = HistoryPage(messages: [], hasMore: false)
        for _ in 0..<1000 where page.messages.isEmpty {
            await Task.yield()
            page = try await engine.history(Identity(user: "bob"), room: "dm:alice:bob", before: nil, after: nil, limit: nil)
        }
        #expect(page.messages.map(\.content) == ["📞 Missed call"] && page.messages.first?.user == "alice")
        #expect(sent(bob).contains("call missed alice") && sent(alice).contains("call missed alice"))
        // Calling oneself, or a user the credential may not message, is refused.
        await alice.receive(.call(user: "alice", video: false), id: .number(2))
        #expect(sent(alice).last == "error 2 bad_request")
        // A caller who goes away while it rings cancels the call.
        let caller = try connection("carol")
        await caller.receive(.call(user: "bob", video: true), id: nil)
        _ = sent(bob)
        await caller.finish()
        #expect(sent(bob).contains("call cancel carol"))
    }

    // MARK: Direct messages and notifications

    @Test("a DM room is its two users' only: opened by naming the other, refused to a third by join, post, history and listings")
    func directMessages() async throws {
        let alice = try connection("alice")
        let bob = try connection("bob")
        let carol = try connection("carol")
        await alice.receive(.direct(user: "bob", since: nil), id: .number(1))
        #expect(sent(alice) == ["ack 1 joined dm:alice:bob 0 [\"alice\"]"])
        // Bob has not joined: he is told of the message through his own channel.
        await alice.receive(.message(room: "dm:alice:bob", content: "psst", clientId: nil), id: .number(2))
        #expect(sent(alice) == ["ack 2 published 1", "message dm:alice:bob 1 alice psst"])
        #expect(sent(bob) == ["notify bob dm dm:alice:bob 1"])
        #expect(sent(carol).isEmpty)
        // Bob opens it by naming alice: the same room.
        await bob.receive(.direct(user: "alice", since: 0), id: .number(1))
        #expect(sent(bob) == ["ack 1 joined dm:alice:bob 1 [\"alice\", \"bob\"]", "message dm:alice:bob 1 alice psst"])
        for command in [Command.join(room: "dm:alice:bob", since: 0), .message(room: "dm:alice:bob", content: "me too", clientId: nil),
                        .history(room: "dm:alice:bob", before: nil, after: nil, limit: nil), .presence(room: "dm:alice:bob")] {
            await carol.receive(command, id: .number(9))
            #expect(sent(carol) == ["error 9 forbidden"], "\(command)")
        }
        let listed = try await engine.rooms(Identity(user: "carol")).map(\.room)
        #expect(!listed.contains("dm:alice:bob"))
        #expect(try await engine.rooms(Identity(user: "bob")).map(\.room).contains("dm:alice:bob"))
        // Only the spelling `DirectRoom.name` gives is a DM room (4 bad commands: this test's
        // connection is closed at the fifth in a row).
        _ = sent(alice)
        for bad in ["dm:bob:alice", "dm:alice", "dm:alice:bob:carol", "dm::bob"] {
            await alice.receive(.join(room: bad, since: nil), id: .number(3))
            #expect(sent(alice) == ["error 3 bad_request"], "\(bad)")
        }
        await carol.receive(.direct(user: "not a user", since: nil), id: .number(4))
        #expect(sent(carol) == ["error 4 bad_request"])
    }

    @Test("a mention notifies the users it names wherever they are, never the author, and only those who may read the room")
    func mentions() async throws {
        let alice = try connection("alice")
        let bob = try connection("bob")
        let carol = try connection("carol")
        let restricted = Connection(
            engine: engine, authenticator: TestAuthenticator(), format: TextFormat(),
            settings: .init(transport: "websocket", handshakeTimeout: .seconds(10)), clock: clock, logger: .init(label: "test")
        )
        try restricted.start(identity: Identity(user: "dave", rooms: RoomPatterns(["public"])))
        await alice.receive(.join(room: "r", since: nil), id: .number(1))
        _ = sent(alice)
        await alice.receive(.message(room: "r", content: "@carol and @bob. and @alice, mail a@b.c, @dave", clientId: nil), id: nil)
        #expect(sent(alice) == ["message r 1 alice @carol and @bob. and @alice, mail a@b.c, @dave"])
        #expect(sent(bob) == ["notify bob mention r 1"])
        #expect(sent(carol) == ["notify carol mention r 1"])
        // Dave's token does not allow room r: he is not told what was said there.
        #expect(sent(restricted).isEmpty)
        #expect(Mentions.users(in: "@a @b @a x@y @c- (@d) @e.f. @", limits: Limits()) == ["a", "b", "c-", "d", "e.f"])
    }

    @Test("a connection that ends leaves its user's channel; the user's other connections still get notified")
    func userChannelMembership() async throws {
        let alice = try connection("alice")
        let phone = try connection("bob")
        let laptop = try connection("bob")
        await alice.receive(.direct(user: "bob", since: nil), id: nil)
        await alice.receive(.message(room: "dm:alice:bob", content: "one", clientId: nil), id: nil)
        #expect(sent(phone) == ["notify bob dm dm:alice:bob 1"])
        #expect(sent(laptop) == ["notify bob dm dm:alice:bob 1"])
        await phone.finish()
        await alice.receive(.message(room: "dm:alice:bob", content: "two", clientId: nil), id: nil)
        #expect(sent(laptop) == ["notify bob dm dm:alice:bob 2"])
        await laptop.finish()
        await alice.receive(.message(room: "dm:alice:bob", content: "three", clientId: nil), id: nil)
        #expect(engine.sessionCount == 1)
    }

    @Test("a user's rooms list unread counts and mentions, with DMs from their first message; a read on one session reaches the others at once")
    func inbox() async throws {
        let alice = try connection("alice")
        let phone = try connection("bob")
        let laptop = try connection("bob")
        await alice.receive(.join(room: "general", since: nil), id: nil)
        await phone.receive(.join(room: "general", since: nil), id: nil)
        await alice.receive(.message(room: "general", content: "hi", clientId: nil), id: nil)
        await alice.receive(.message(room: "general", content: "@bob look", clientId: nil), id: nil)
        clock.advance(by: .seconds(1))
        await alice.receive(.direct(user: "bob", since: nil), id: nil)
        await alice.receive(.message(room: "dm:alice:bob", content: "psst", clientId: nil), id: nil)
        _ = (sent(phone), sent(laptop))
        await laptop.receive(.inbox, id: .number(1))
        #expect(sent(laptop) == ["ack 1 rooms dm:alice:bob:1/0/1/0 general:2/0/2/1"])
        await phone.receive(.read(room: "general", seq: 2), id: .number(2))
        #expect(sent(laptop) == ["read general bob 2"])
        await laptop.receive(.inbox, id: .number(3))
        #expect(sent(laptop) == ["ack 3 rooms dm:alice:bob:1/0/1/0 general:2/2/0/0"])
        // Alice's own messages are not unread to her.
        await alice.receive(.inbox, id: .number(4))
        #expect(sent(alice).last == "ack 4 rooms dm:alice:bob:1/0/0/0 general:2/0/0/0")
        // A read past the room's end stops at it: later messages still count.
        await phone.receive(.read(room: "general", seq: 99), id: nil)
        #expect(sent(laptop) == ["read general bob 2"])
        clock.advance(by: .seconds(1))
        await alice.receive(.message(room: "general", content: "later", clientId: nil), id: nil)
        await laptop.receive(.inbox, id: .number(5))
        #expect(sent(laptop).last == "ack 5 rooms dm:alice:bob:1/0/1/0 general:3/2/1/0")
    }

    // MARK: Publishing and joining

    @Test("a message is acked to its sender before it is delivered, and reaches every member in order")
    func publish() async throws {
        let alice = try connection("alice")
        let bob = try connection("bob")
        await alice.receive(.join(room: "r", since: nil), id: .number(1))
        await bob.receive(.join(room: "r", since: nil), id: .number(1))
        #expect(sent(alice) == ["ack 1 joined r 0 [\"alice\"]", "join r bob"])
        #expect(sent(bob) == ["ack 1 joined r 0 [\"alice\", \"bob\"]"])
        await alice.receive(.message(room: "r", content: "hi", clientId: nil), id: .number(2))
        await bob.receive(.message(room: "r", content: "hello", clientId: nil), id: nil)
        #expect(sent(alice) == ["ack 2 published 1", "message r 1 alice hi", "message r 2 bob hello"])
        #expect(sent(bob) == ["message r 1 alice hi", "message r 2 bob hello"])
    }

    @Test("concurrent publishers on many connections: every member sees one gapless order")
    func ordering() async throws {
        var limits = engine.limits
        limits.ratePerSecond = 0
        let engine = Engine(store: MemoryMessageStore(), broker: MemoryBroker(), presence: MemoryPresenceStore(), limits: limits, clock: clock)
        let members = try (0..<4).map { index in
            let connection = Connection(
                engine: engine, authenticator: TestAuthenticator(), format: TextFormat(),
                settings: .init(transport: "websocket", handshakeTimeout: .seconds(10)), clock: clock,
                outbox: Outbox(maxBytes: 1 << 20), logger: .init(label: "test")
            )
            try connection.start(identity: Identity(user: "u\(index)"))
            return connection
        }
        for member in members { await member.receive(.join(room: "r", since: nil), id: nil) }
        await withTaskGroup(of: Void.self) { group in
            for member in members {
                group.addTask {
                    for index in 0..<25 { await member.receive(.message(room: "r", content: "m\(index)", clientId: nil), id: nil) }
                }
            }
        }
        for member in members {
            let seqs = sent(member).filter { $0.hasPrefix("message") }.map { Int($0.split(separator: " ")[2])! }
            #expect(seqs == Array(1...100))
        }
    }

    @Test("join with since replays what was missed, then goes live without gap or duplicate")
    func joinSince() async throws {
        let alice = try connection("alice")
        await alice.receive(.join(room: "r", since: nil), id: nil)
        for index in 1...2 { await alice.receive(.message(room: "r", content: "m\(index)", clientId: nil), id: nil) }
        clock.advance(by: .seconds(1))
        await alice.receive(.message(room: "r", content: "m3", clientId: nil), id: nil)
        let bob = try connection("bob")
        await bob.receive(.join(room: "r", since: 1), id: .number(5))
        clock.advance(by: .seconds(1))
        await alice.receive(.message(room: "r", content: "m4", clientId: nil), id: nil)
        #expect(sent(bob) == ["ack 5 joined r 3 [\"alice\", \"bob\"]", "message r 2 alice m2", "message r 3 alice m3", "message r 4 alice m4"])
        // Joining again acks again and replays nothing.
        await bob.receive(.join(room: "r", since: 0), id: .number(6))
        #expect(sent(bob) == ["ack 6 joined r 4 [\"alice\", \"bob\"]"])
    }

    @Test("leave tells the others, and leaving a room not joined is not_found")
    func leave() async throws {
        let alice = try connection("alice")
        let bob = try connection("bob")
        await alice.receive(.join(room: "r", since: nil), id: nil)
        await bob.receive(.join(room: "r", since: nil), id: nil)
        _ = sent(alice)
        await bob.receive(.leave(room: "r"), id: .number(3))
        await bob.receive(.leave(room: "r"), id: .number(4))
        #expect(sent(bob) == ["ack 3 left r", "error 4 not_found"])
        #expect(sent(alice) == ["leave r bob"])
        await alice.receive(.presence(room: "r"), id: .number(9))
        #expect(sent(alice) == ["ack 9 presence r [\"alice\"]"])
        // A connection that ends leaves its rooms.
        await alice.finish()
        await bob.receive(.join(room: "r", since: nil), id: .number(10))
        #expect(sent(bob) == ["ack 10 joined r 0 [\"bob\"]"])
    }

    @Test("a large room pages its presence list and batches joins and leaves into one update per interval")
    func largeRoom() async throws {
        var limits = Limits()
        limits.largeRoomSize = 3
        limits.presencePageSize = 2
        let engine = Engine(store: MemoryMessageStore(), broker: MemoryBroker(), presence: MemoryPresenceStore(), limits: limits, clock: clock)
        let users = try (1...5).map { try open("u\($0)", on: engine) }
        for (index, user) in users.enumerated() { await user.receive(.join(room: "r", since: nil), id: .number(Int64(index + 1))) }
        // Up to the threshold, one event per join and the whole list (paged past 2 users).
        #expect(sent(users[0]) == ["ack 1 joined r 0 [\"u1\"]", "join r u2", "join r u3"])
        #expect(sent(users[2]) == ["ack 3 joined r 0 [\"u1\", \"u2\"] of 3"])
        // Past it, nothing per join: one update once the interval has passed.
        #expect(sent(users[4]) == ["ack 5 joined r 0 [\"u1\", \"u2\"] of 5"])
        #expect(sent(users[1]) == ["ack 2 joined r 0 [\"u1\", \"u2\"]", "join r u3"])
        #expect(sent(users[3]) == ["ack 4 joined r 0 [\"u1\", \"u2\"] of 4"])
        await engine.tick()
        #expect(sent(users[1]) == [])
        clock.advance(by: .seconds(1))
        await engine.tick()
        for user in users { #expect(sent(user) == ["presence r 5 +[\"u4\", \"u5\"] -[]"]) }
        await users[0].receive(.presence(room: "r", after: "u2", limit: 2), id: .number(9))
        await users[0].receive(.presence(room: "r", after: "u4", limit: nil), id: .number(10))
        #expect(sent(users[0]) == ["ack 9 presence r [\"u3\", \"u4\"] of 5", "ack 10 presence r [\"u5\"]"])
        // A join and leave within one interval cancel out; the room shrinks back to small.
        await users[4].receive(.leave(room: "r"), id: nil)
        await users[3].receive(.leave(room: "r"), id: nil)
        let again = try open("u6", on: engine)
        await again.receive(.join(room: "r", since: nil), id: nil)
        await again.receive(.leave(room: "r"), id: nil)
        clock.advance(by: .seconds(1))
        await engine.tick()
        #expect(sent(users[0]) == ["presence r 3 +[] -[\"u4\", \"u5\"]"])
        await users[2].receive(.leave(room: "r"), id: nil)
        #expect(sent(users[0]) == ["leave r u3"])
    }

    // MARK: Typing and limits

    @Test("typing is relayed, coalesced within the window, and ends by itself after the timeout")
    func typing() async throws {
        let alice = try connection("alice")
        let bob = try connection("bob")
        await alice.receive(.join(room: "r", since: nil), id: nil)
        await bob.receive(.join(room: "r", since: nil), id: nil)
        _ = sent(alice)
        await bob.receive(.typing(room: "r", typing: true), id: .number(1))
        await bob.receive(.typing(room: "r", typing: false), id: nil)
        await bob.receive(.typing(room: "r", typing: true), id: nil)
        #expect(sent(bob) == ["ack 1 typing r true"])
        #expect(sent(alice) == ["typing r bob true"])
        // The flip-flop within the window comes to nothing: bob still types.
        clock.advance(by: .milliseconds(600))
        await engine.tick()
        #expect(sent(alice) == [])
        clock.advance(by: engine.limits.typingTimeout)
        await engine.tick()
        #expect(sent(alice) == ["typing r bob false"])
        await bob.receive(.typing(room: "nowhere", typing: true), id: .number(2))
        #expect(sent(bob) == ["error 2 not_found"])
    }

    @Test("publishing over the rate is rate_limited until the bucket refills")
    func rateLimit() async throws {
        let alice = try connection("alice")
        await alice.receive(.join(room: "r", since: nil), id: nil)
        _ = sent(alice)
        for id in 1...3 { await alice.receive(.message(room: "r", content: "m", clientId: nil), id: .number(Int64(id))) }
        #expect(sent(alice).filter { $0.hasPrefix("ack") || $0.hasPrefix("error") } == ["ack 1 published 1", "ack 2 published 2", "error 3 rate_limited"])
        clock.advance(by: .milliseconds(500))
        await alice.receive(.message(room: "r", content: "m", clientId: nil), id: .number(4))
        #expect(sent(alice).first == "ack 4 published 3")
    }

    @Test("the command budget refuses a burst of joins, and refills with time")
    func commandBudget() async throws {
        let alice = try connection("alice")
        for index in 0..<Int(engine.limits.commandBurst) { await alice.receive(.join(room: "r\(index % 50)", since: nil), id: nil) }
        _ = sent(alice)
        await alice.receive(.presence(room: "r1"), id: .number(1))
        #expect(sent(alice) == ["error 1 rate_limited"])
        clock.advance(by: .seconds(1))
        await alice.receive(.presence(room: "r1"), id: .number(2))
        #expect(sent(alice) == ["ack 2 presence r1 [\"alice\"]"])
    }

    // MARK: Opening, refreshing and closing

    @Test("a connection that never sends connect is closed at the handshake timeout, not before")
    func handshakeTimeout() throws {
        let quiet = try connection(nil)
        clock.advance(by: .milliseconds(9_999))
        #expect(quiet.outbox.closeReason == nil)
        clock.advance(by: .milliseconds(1))
        #expect(quiet.outbox.closeReason == .unauthenticated("no connect within 10.0 seconds"))
    }

    @Test("connect opens the session; commands before it are unauthorized; an API key is refused on a user transport")
    func connect() async throws {
        let client = try connection(nil)
        await client.receive(.join(room: "r", since: nil), id: .number(1))
        await client.receive(.connect(token: "key", user: "alice"), id: .number(2))
        await client.receive(.connect(token: "alice", user: nil), id: .number(3))
        await client.receive(.connect(token: nil, user: "bob"), id: .number(4))
        #expect(sent(client) == ["error 1 unauthorized", "error 2 forbidden", "ack 3 connected alice", "error 4 bad_request"])
        clock.advance(by: .seconds(60))
        #expect(client.outbox.closeReason == nil)
    }

    @Test("a backend transport lets an API key act as the user connect names")
    func backend() async throws {
        let stream = Connection(
            engine: engine, authenticator: TestAuthenticator(), format: TextFormat(),
            settings: .init(transport: "grpc", handshakeTimeout: .seconds(10), backendsMayConnect: true), clock: clock,
            logger: .init(label: "test")
        )
        try stream.start(identity: nil, backend: Identity(user: "backend", isBackend: true))
        await stream.receive(.connect(token: nil, user: nil), id: .number(1))
        await stream.receive(.connect(token: nil, user: "helper"), id: .number(2))
        await stream.receive(.join(room: "r", since: nil), id: nil)
        await stream.receive(.message(room: "r", content: "from the backend", clientId: nil), id: nil)
        #expect(sent(stream) == ["error 1 bad_request", "ack 2 connected helper", "message r 1 helper from the backend"])
    }

    @Test("an expiring token is warned once at expiry and closed after the grace unless refreshed")
    func expiry() async throws {
        let expiresAt = clock.now.adding(milliseconds: 10_000)
        let expiring = Connection(
            engine: engine, authenticator: TestAuthenticator(), format: TextFormat(),
            settings: .init(transport: "websocket", handshakeTimeout: .seconds(10), refreshGrace: .seconds(30)), clock: clock,
            logger: .init(label: "test")
        )
        try expiring.start(identity: Identity(user: "alice", expiresAt: expiresAt))
        let refreshed = try connection(nil)
        await refreshed.receive(.connect(token: "alice@\(expiresAt.milliseconds)", user: nil), id: .number(1))
        _ = sent(refreshed)

        clock.advance(by: .seconds(10))
        #expect(sent(expiring) == ["error unauthorized"])
        #expect(sent(refreshed) == ["error unauthorized"])
        // During the grace only connect (and ping, leave) work.
        await expiring.receive(.join(room: "r", since: nil), id: .number(2))
        #expect(sent(expiring) == ["error 2 unauthorized"])
        let later = clock.now.adding(milliseconds: 3_600_000)
        await refreshed.receive(.connect(token: "alice@\(later.milliseconds)", user: nil), id: .number(3))
        await refreshed.receive(.connect(token: "bob", user: nil), id: .number(4))
        #expect(sent(refreshed) == ["ack 3 connected alice", "error 4 forbidden"])

        clock.advance(by: .milliseconds(29_999))
        #expect(expiring.outbox.closeReason == nil)
        clock.advance(by: .milliseconds(1))
        #expect(expiring.outbox.closeReason == .unauthenticated("token expired"))
        #expect(refreshed.outbox.closeReason == nil)
        await refreshed.receive(.join(room: "r", since: nil), id: .number(5))
        #expect(sent(refreshed) == ["ack 5 joined r 0 [\"alice\"]"])
        // The fresh token runs out in turn.
        clock.advance(by: .seconds(3600 + 30))
        #expect(refreshed.outbox.closeReason == .unauthenticated("token expired"))
        #expect(clock.pendingTimers == 0)
    }

    @Test("a one-way stream (SSE) gets the error at expiry and ends after what was queued")
    func oneWayExpiry() async throws {
        let stream = Connection(
            engine: engine, authenticator: TestAuthenticator(), format: TextFormat(),
            settings: .init(transport: "sse", handshakeTimeout: .zero, acceptsCommands: false), clock: clock, logger: .init(label: "test")
        )
        try stream.start(identity: Identity(user: "alice", expiresAt: clock.now.adding(milliseconds: 5_000)))
        try await stream.perform(.join(room: "r", since: nil), id: nil)
        clock.advance(by: .seconds(5))
        #expect(stream.outbox.closeReason == .goingAway)
        #expect(sent(stream) == ["error unauthorized"])
    }

    @Test("a frame that cannot be decoded is answered in its turn, after the commands sent before it")
    func submittedInOrder() async throws {
        let alice = try connection("alice")
        #expect(alice.submit(.join(room: "r", since: nil), id: .number(1)))
        #expect(alice.submit(rejecting: .badRequest("bad"), id: .number(2)))
        #expect(alice.submit(.ping, id: .number(3)))
        var seen: [String] = []
        let watchdog = Task {
            try await Task.sleep(for: .seconds(5))
            alice.close(.serverError("test timed out"))
        }
        defer { watchdog.cancel() }
        while seen.count < 3, case .frames(let batch) = await alice.outbox.next() {
            seen += batch.map { String(buffer: $0.bytes) }
        }
        #expect(seen == ["ack 1 joined r 0 [\"alice\"]", "error 2 bad_request", "pong"])
    }

    @Test("bad commands in a row close the connection; a good one resets the count")
    func badCommands() async throws {
        let alice = try connection("alice")
        for _ in 0..<4 { alice.reject(.badRequest("bad"), id: nil) }
        await alice.receive(.ping, id: nil)
        for _ in 0..<4 { alice.reject(.badRequest("bad"), id: nil) }
        #expect(alice.outbox.closeReason == nil)
        alice.reject(.badRequest("bad"), id: nil)
        #expect(alice.outbox.closeReason == .policyViolation("too many bad commands in a row"))
        // Once closing, commands are ignored.
        await alice.receive(.ping, id: .number(1))
        #expect(sent(alice).isEmpty)
    }

    @Test("a member that does not read is cut off as a slow consumer; the room and the sender go on")
    func slowConsumer() async throws {
        var limits = engine.limits
        limits.ratePerSecond = 0
        let engine = Engine(store: MemoryMessageStore(), broker: MemoryBroker(), presence: MemoryPresenceStore(), limits: limits, clock: clock)
        let reader = try open("reader", on: engine)
        let stalled = try open("stalled", on: engine)
        let sender = try open("sender", on: engine)
        for connection in [reader, stalled, sender] { await connection.receive(.join(room: "r", since: nil), id: nil) }
        let content = String(repeating: "x", count: 200)
        var delivered = 0
        for _ in 0..<40 {
            await sender.receive(.message(room: "r", content: content, clientId: nil), id: nil)
            delivered += sent(reader).filter { $0.hasPrefix("message") }.count
            _ = sent(sender)
        }
        #expect(stalled.outbox.closeReason == .slowConsumer)
        #expect(delivered == 40)
        #expect(sender.outbox.closeReason == nil)
    }

    // MARK: The outbox

    @Test("a pushed outbox signals once per drain, however many frames are queued meanwhile")
    func pushedOutbox() {
        let signals = Atomic<Int>(0)
        let outbox = Outbox(maxBytes: 1 << 20) { signals.add(1, ordering: .relaxed) }
        var batch: [Outbox.Frame] = []
        for index in 0..<100 { outbox.enqueue(ByteBuffer(string: "\(index)")) }
        #expect(signals.load(ordering: .relaxed) == 1)
        #expect(outbox.take(into: &batch) == nil)
        #expect(batch.count == 100)
        batch.removeAll(keepingCapacity: true)
        outbox.enqueue(ByteBuffer(string: "again"))
        #expect(signals.load(ordering: .relaxed) == 2)
        outbox.close(.goingAway)
        #expect(signals.load(ordering: .relaxed) == 2)
        // Shutdown lets what is queued go first, with the reason to close after it.
        #expect(outbox.take(into: &batch) == .goingAway)
        #expect(batch.map { String(buffer: $0.bytes) } == ["again"])
        batch.removeAll()
        #expect(outbox.take(into: &batch) == .goingAway)
    }
}
