import NIOCore
@testable import ParleyCore
import Testing

@Suite("Engine state machines")
struct EngineStateTests {
    final class Recorder: EventEncoder {
        func encode(_ event: ServerEvent) -> ByteBuffer {
            guard case .message(let message) = event else { return ByteBuffer(string: "event") }
            return ByteBuffer(string: String(message.seq))
        }
    }

    func message(_ seq: Int64, room: String = "r") -> Message {
        Message(id: "id\(seq)", room: room, seq: seq, user: "u", content: "c", timestamp: .now, clientId: nil)
    }

    /// The frames queued so far; gives up (closing the outbox) after 2 s so a test never hangs.
    func frames(_ outbox: Outbox) async -> [String] {
        let watchdog = Task {
            try await Task.sleep(for: .seconds(2))
            outbox.close(.serverError("test timed out"))
        }
        defer { watchdog.cancel() }
        guard case .frames(let batch) = await outbox.next() else { return [] }
        return batch.map { String(buffer: $0.bytes) }
    }

    func session(maxBytes: Int = 1 << 20) -> Session {
        var limits = Limits()
        limits.maxOutboxBytes = maxBytes
        return Session(id: "s", identity: Identity(user: "u"), transport: "test", encoder: Recorder(), outbox: Outbox(maxBytes: maxBytes), limits: limits)
    }

    @Test("a room delivers early arrivals only once the gap before them closes")
    func roomReorders() async {
        let member = session()
        var room = Room(lastDelivered: 0)
        _ = room.add(member, since: nil)
        #expect(room.receive(message(2)) == true)  // opens a gap: schedule a fill
        #expect(room.receive(message(3)) == false)  // already scheduled
        #expect(room.gap! == (0, 2))
        #expect(room.receive(message(1)) == false)
        #expect(room.receive(message(2)) == false)  // duplicate
        #expect(room.gap == nil)
        #expect(await frames(member.outbox) == ["1", "2", "3"])
    }

    @Test("resync delivers stored messages the broker lost, with no later message to reveal them")
    func hubResync() async throws {
        let store = MemoryMessageStore()
        let hub = Hub(store: store, metrics: ParleyMetrics(), logger: .init(label: "test"))
        let member = session()
        _ = try await hub.add(member, room: "r", since: nil)
        let first = try await store.append(MessageDraft(room: "r", user: "u", content: "one"))
        hub.receive(.message(first.message))
        // Stored but never published: a trailing gap.
        _ = try await store.append(MessageDraft(room: "r", user: "u", content: "two"))
        _ = try await store.append(MessageDraft(room: "r", user: "u", content: "three"))
        await hub.resync(room: "r")
        await hub.resync(room: "not-here")
        var seen: [String] = []
        while seen.count < 3 {
            let batch = await frames(member.outbox)
            if batch.isEmpty { break }
            seen += batch
        }
        #expect(seen == ["1", "2", "3"])
    }

    @Test("skipping a gap delivers what waits after it")
    func roomSkipsGap() async {
        let member = session()
        var room = Room(lastDelivered: 4)
        _ = room.add(member, since: nil)
        _ = room.receive(message(7))
        room.skipGap()
        #expect(room.lastDelivered == 7)
        _ = room.receive(message(8))
        #expect(await frames(member.outbox) == ["7", "8"])
    }

    @Test("a catching-up member buffers live messages and goes live at the seam")
    func catchUpSeam() async {
        let member = session()
        var room = Room(lastDelivered: 5)
        let position = room.add(member, since: 2)!
        #expect(position.catchingUp)
        _ = room.receive(message(6))
        _ = room.receive(message(7))
        #expect(member.outbox.isClosing == false)
        // The replay read 3...6 from the store (6 was committed before the read).
        var cursor: Int64 = 6
        #expect(room.finishCatchUp(member, cursor: &cursor))
        #expect(cursor == 7)
        _ = room.receive(message(8))
        #expect(await frames(member.outbox) == ["7", "8"])
    }

    @Test("a catch-up that stopped short of the buffer reads the store again")
    func catchUpGap() {
        let member = session()
        var room = Room(lastDelivered: 5)
        _ = room.add(member, since: 0)
        _ = room.receive(message(6))
        var cursor: Int64 = 3
        #expect(room.finishCatchUp(member, cursor: &cursor) == false)
    }

    @Test("an outbox past its bound drops its backlog and closes as a slow consumer")
    func outboxOverflow() async {
        let outbox = Outbox(maxBytes: 10)
        #expect(outbox.enqueue(ByteBuffer(string: "12345")))
        #expect(outbox.enqueue(ByteBuffer(string: "123456")) == false)
        #expect(outbox.enqueue(ByteBuffer(string: "1")) == false)
        guard case .closed(.slowConsumer) = await outbox.next() else {
            Issue.record("expected a slow-consumer close")
            return
        }
    }

    @Test("a replay waits for the writer to drain instead of overflowing")
    func outboxSpace() async {
        let outbox = Outbox(maxBytes: 10)
        #expect(await outbox.waitForSpace())
        outbox.enqueue(ByteBuffer(string: "123456"))
        let waiting = Task { await outbox.waitForSpace() }
        try? await Task.sleep(for: .milliseconds(50))
        #expect(await frames(outbox) == ["123456"])
        #expect(await waiting.value)
        outbox.enqueue(ByteBuffer(string: "123456"))
        let closed = Task { await outbox.waitForSpace() }
        outbox.close(.slowConsumer)
        #expect(await closed.value == false)
    }

    @Test("going away still sends what was queued")
    func outboxGoingAway() async {
        let outbox = Outbox(maxBytes: 100)
        outbox.enqueue(ByteBuffer(string: "last"))
        outbox.close(.goingAway)
        #expect(await frames(outbox) == ["last"])
        guard case .closed(.goingAway) = await outbox.next() else {
            Issue.record("expected going away")
            return
        }
    }

    @Test("token bucket allows the burst, then asks to wait; rate 0 never limits")
    func tokenBucket() {
        let start = ContinuousClock.now
        var bucket = TokenBucket(rate: 20, burst: 40, now: start)
        for _ in 0..<40 { #expect(bucket.take(now: start) == nil) }
        #expect(bucket.take(now: start) == 50)
        #expect(bucket.take(now: start + .milliseconds(50)) == nil)
        var unlimited = TokenBucket(rate: 0, burst: 0, now: start)
        for _ in 0..<1000 { #expect(unlimited.take(now: start) == nil) }
    }

    @Test("names, content and limits follow the protocol")
    func validation() throws {
        let limits = Limits()
        #expect(Validation.isValidRoom("general:fr_1.x-2", limits: limits))
        #expect(!Validation.isValidRoom("", limits: limits))
        #expect(!Validation.isValidRoom(String(repeating: "a", count: 65), limits: limits))
        #expect(!Validation.isValidRoom("with space", limits: limits))
        #expect(!Validation.isValidRoom("é", limits: limits))
        #expect(Validation.isValidUser("alice.b-c_1", limits: limits))
        #expect(!Validation.isValidUser("a:b", limits: limits))
        #expect(!Validation.isValidUser(String(repeating: "a", count: 33), limits: limits))
        #expect(try Validation.content("  hi \n", limits: limits) == "hi")
        #expect(throws: ParleyError.self) { try Validation.content(" \n\t ", limits: limits) }
        #expect(throws: ParleyError.self) { try Validation.content("nul \u{0} inside", limits: limits) }
        // 4000 code points is the limit, whatever their UTF-8 size.
        #expect(try Validation.content(String(repeating: "é", count: 4000), limits: limits).unicodeScalars.count == 4000)
        #expect(throws: ParleyError.self) { try Validation.content(String(repeating: "a", count: 4001), limits: limits) }
        #expect(throws: ParleyError.self) { try Validation.historyLimit(0, limits: limits) }
        #expect(throws: ParleyError.self) { try Validation.historyLimit(101, limits: limits) }
        #expect(try Validation.historyLimit(nil, limits: limits) == 50)
    }

    @Test("message ids are ULIDs that sort in creation order")
    func messageIDs() {
        let ids = (0..<1000).map { _ in MessageID.next() }
        #expect(ids == ids.sorted())
        #expect(Set(ids).count == 1000)
        #expect(ids.allSatisfy { $0.count == 26 })
    }

    @Test("timestamps render as RFC 3339 UTC with milliseconds")
    func timestamps() {
        #expect(Timestamp(milliseconds: 1_795_342_530_123).rfc3339 == "2026-11-22T10:15:30.123Z")
        #expect(Timestamp(milliseconds: 5).rfc3339 == "1970-01-01T00:00:00.005Z")
    }
}

@Suite("Coalescing and command budget")
struct CoalescingTests {
    let start = ContinuousClock.now
    func at(_ ms: Int) -> ContinuousClock.Instant { start + .milliseconds(ms) }

    @Test("the first change goes out at once; a flood within the window becomes its newest state, once")
    func coalescesFlood() {
        var typing = Coalescer<String, Bool>(window: .milliseconds(500))
        #expect(typing.offer("alice", true, now: at(0)) == true)
        for ms in stride(from: 10, to: 400, by: 10) {
            #expect(typing.offer("alice", ms % 20 == 0, now: at(ms)) == nil)
        }
        #expect(typing.offer("alice", false, now: at(410)) == nil)
        #expect(typing.due(now: at(450)).isEmpty)
        let due = typing.due(now: at(500))
        #expect(due.map(\.value) == [false])
        // Quiet for a window: forgotten, so the next change goes out at once.
        #expect(typing.due(now: at(1000)).isEmpty)
        #expect(typing.entries.isEmpty)
        #expect(typing.offer("alice", true, now: at(1001)) == true)
    }

    @Test("a flood that ends where it began sends nothing more; keys are independent; force sends at once")
    func coalescesToNothing() {
        var reads = Coalescer<String, Int64>(window: .milliseconds(500))
        #expect(reads.offer("alice", 5, now: at(0)) == 5)
        #expect(reads.offer("bob", 7, now: at(1)) == 7)
        #expect(reads.offer("alice", 6, now: at(100)) == nil)
        #expect(reads.offer("alice", 5, now: at(200)) == nil)
        #expect(reads.offer("bob", 8, now: at(100)) == nil)
        #expect(reads.offer("bob", 9, now: at(101), force: true) == 9)
        #expect(reads.offer("bob", 9, now: at(601)) == nil)  // repeats what was sent
        #expect(reads.due(now: at(700)).isEmpty)
    }

    @Test("the token bucket charges by cost and says how long to wait")
    func weightedBucket() {
        var bucket = TokenBucket(rate: 10, burst: 10, now: start)
        #expect(bucket.take(5, now: start) == nil)
        #expect(bucket.take(5, now: start) == nil)
        #expect(bucket.take(5, now: start) == 500)
        #expect(bucket.take(5, now: at(500)) == nil)
        // A cost above the burst is charged as the burst, never refused forever.
        #expect(bucket.take(50, now: at(1500)) == nil)
    }
}
