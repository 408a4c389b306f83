import NIOCore
import ParleyCore
import ParleyTestSupport
import Synchronization
import Testing

@Suite("Webhook outbox in every store")
struct WebhookOutboxSuite {
    func outbox(_ store: any MessageStore) throws -> any WebhookOutbox {
        try #require(store as? any WebhookOutbox)
    }

    @Test("stored rows enter the outbox with their commit; only each room's oldest live row is claimed, under a lease; retries, dead letters and revivals; rows survive a restart", arguments: StoreKind.allCases)
    func outboxQueues(kind: StoreKind) async throws {
        try await withStore(kind) { store, running in
            let outbox = try outbox(store)
            let before = try await store.append(draft("a", "not selected yet"))
            outbox.selectWebhooks(WebhookSelection(targets: 1, kinds: [.message, .edit, .join]))
            let a1 = try await store.append(draft("a", "one")).message
            let a2 = try await store.append(draft("a", "two")).message
            let b1 = try await store.append(draft("b", "three")).message
            _ = try await store.append(change("b", b1.id, .react(.add), "👍"))  // not selected
            // A duplicate stores nothing, so it queues nothing.
            let a3 = try await store.append(draft("a", "three", clientId: "c1")).message
            #expect(try await store.append(draft("a", "three", clientId: "c1")).duplicate)
            try await outbox.enqueueWebhooks([
                WebhookDraft(kind: .join, room: "b", user: "carol", timestamp: .now),
                WebhookDraft(kind: .leave, room: "b", user: "carol", timestamp: .now),  // not selected
            ])
            #expect(try await outbox.webhookBacklog() == 5)
            _ = before

            let now = Timestamp(milliseconds: 1_000_000)
            let lease = now.adding(milliseconds: 60_000)
            var claimed = try await outbox.claimWebhooks(now: now, leaseUntil: lease, limit: 10)
            #expect(claimed.map(\.seq) == [a1.seq, b1.seq])
            #expect(claimed.map(\.room) == ["a", "b"] && claimed.allSatisfy { $0.kind == .message && $0.attempts == 0 && $0.target == 0 })
            #expect(claimed[0].user == a1.user && claimed[0].timestamp == a1.timestamp)
            // Leased: no one else gets them, nor the rows behind them.
            #expect(try await outbox.claimWebhooks(now: now, leaseUntil: lease, limit: 10).isEmpty)

            try await outbox.completeWebhook(id: claimed[0].id)
            let next = try await outbox.claimWebhooks(now: now, leaseUntil: lease, limit: 10)
            #expect(next.map(\.seq) == [a2.seq])

            // A retry is due again at its time, with the attempt counted and the error kept.
            try await outbox.retryWebhook(id: claimed[1].id, at: now.adding(milliseconds: 5000), error: "HTTP 500")
            #expect(try await outbox.claimWebhooks(now: now.adding(milliseconds: 4999), leaseUntil: lease, limit: 10).isEmpty)
            claimed = try await outbox.claimWebhooks(now: now.adding(milliseconds: 5000), leaseUntil: lease, limit: 10)
            #expect(claimed.count == 1)
            #expect(claimed[0].room == "b" && claimed[0].attempts == 1 && claimed[0].lastError == "HTTP 500")

            // A lease that runs out (its instance died) frees the row for another claim.
            let again = try await outbox.claimWebhooks(now: lease.adding(milliseconds: 1), leaseUntil: lease.adding(milliseconds: 60_000), limit: 10)
            #expect(Set(again.map(\.id)) == [next[0].id, claimed[0].id])

            // Dead: kept, listed, and the room's next row goes.
            try await outbox.deadLetterWebhook(id: claimed[0].id, error: "HTTP 503")
            let dead = try await outbox.deadWebhooks(limit: 10)
            #expect(dead.map(\.id) == [claimed[0].id] && dead[0].attempts == 2 && dead[0].lastError == "HTTP 503")
            let later = lease.adding(milliseconds: 120_001)
            let join = try await outbox.claimWebhooks(now: later, leaseUntil: later.adding(milliseconds: 60_000), limit: 10)
            #expect(join.map(\.kind) == [.message, .join] && join[1].user == "carol" && join[1].room == "b")
            #expect(try await outbox.webhookBacklog() == 3)  // a2, a3 and the join; not the dead one

            // Revived: live again, attempts reset, ahead of the room's later rows once they go.
            #expect(try await outbox.reviveWebhook(id: claimed[0].id))
            #expect(try await outbox.reviveWebhook(id: claimed[0].id) == false)
            #expect(try await outbox.deadWebhooks(limit: 10).isEmpty)
            try await outbox.completeWebhook(id: join[1].id)
            try await outbox.completeWebhook(id: join[0].id)
            let revived = try await outbox.claimWebhooks(now: later, leaseUntil: later.adding(milliseconds: 60_000), limit: 10)
            #expect(revived.map(\.room) == ["b", "a"] && revived[0].id == claimed[0].id && revived[0].attempts == 0 && revived[1].seq == a3.seq)

            if let reopened = try await running.reopen() {
                await running.close()
                let outbox = try self.outbox(reopened.store)
                outbox.selectWebhooks(WebhookSelection(targets: 1, kinds: [.message]))
                #expect(try await outbox.webhookBacklog() == 2)
                // SQLite: this process is the only writer, so its earlier leases end at once;
                // PostgreSQL's are shared by a cluster and run out.
                let reclaimed = try await outbox.claimWebhooks(now: later, leaseUntil: later.adding(milliseconds: 1), limit: 10)
                #expect(reclaimed.map(\.id) == (kind == .sqlite ? revived.map(\.id) : []))
                await reopened.close()
            }
        }
    }

    @Test("each target has its own queue of every selected row, in order", arguments: StoreKind.allCases)
    func targets(kind: StoreKind) async throws {
        try await withStore(kind) { store, _ in
            let outbox = try outbox(store)
            outbox.selectWebhooks(WebhookSelection(targets: 2, kinds: Set(WebhookKind.allCases)))
            // Appended together: one commit, several rooms.
            let messages = try await withThrowingTaskGroup(of: Message.self) { group in
                for n in 0..<12 { group.addTask { try await store.append(draft("r\(n % 3)", "m\(n)")).message } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(try await outbox.webhookBacklog() == 24)
            // A queue's rows behind its head come with it; released ones are claimed again.
            let lease = Timestamp(milliseconds: 100)
            let first = try await outbox.claimWebhooks(now: Timestamp(milliseconds: 1), leaseUntil: lease, limit: 1, perQueue: 3)
            #expect(first.count == 3 && Set(first.map(\.room)).count == 1 && Set(first.map(\.target)).count == 1)
            #expect(first.compactMap(\.seq) == first.compactMap(\.seq).sorted())
            try await outbox.releaseWebhooks(ids: first.map(\.id))
            var seen: [Int: [String: [Int64]]] = [:]
            let now = Timestamp(milliseconds: 1)
            while true {
                let claimed = try await outbox.claimWebhooks(now: now, leaseUntil: now, limit: 4, perQueue: 3)
                if claimed.isEmpty { break }
                for event in claimed {
                    seen[event.target, default: [:]][event.room, default: []].append(event.seq ?? -1)
                    try await outbox.completeWebhook(id: event.id)
                }
            }
            for target in [0, 1] {
                for room in ["r0", "r1", "r2"] {
                    let seqs = messages.filter { $0.room == room }.map(\.seq).sorted()
                    #expect(seen[target]?[room] == seqs, "target \(target), room \(room)")
                }
            }
        }
    }
}

/// A backend that answers what a test scripted (per event id), 200 otherwise.
final class ScriptedBackend: WebhookTransport {
    struct Received: Sendable {
        var request: WebhookRequest
        var id: String
        var attempt: Int
    }

    let received = Mutex<[Received]>([])
    let answers = Mutex<[String: [Result<Int, Refused>]]>([:])

    struct Refused: Error {}

    func send(_ request: WebhookRequest) async throws -> WebhookResponse {
        let header = { (name: String) in request.headers.first { $0.0 == name }?.1 ?? "" }
        let id = header("Parley-Event-Id")
        received.withLock { $0.append(Received(request: request, id: id, attempt: Int(header("Parley-Attempt")) ?? 0)) }
        let answer = answers.withLock { answers -> Result<Int, Refused> in
            guard var queue = answers[id], !queue.isEmpty else { return .success(200) }
            defer { answers[id] = queue }
            return queue.removeFirst()
        }
        return WebhookResponse(status: try answer.get())
    }

    func script(_ id: Int64, _ answers: [Result<Int, Refused>]) {
        self.answers.withLock { $0[String(id)] = answers }
    }
}

@Suite("Webhook dispatcher")
struct WebhookDispatcherTests {
    struct Rig {
        let store = MemoryMessageStore()
        let clock = ManualClock()
        let backend = ScriptedBackend()
        let dispatcher: WebhookDispatcher

        init(maxAttempts: Int = 4, urls: [String] = ["http://backend.test/hook"]) {
            var configuration = WebhookDispatcher.Configuration(urls: urls, secret: Array("s3cret".utf8))
            configuration.maxAttempts = maxAttempts
            configuration.baseDelay = .seconds(1)
            dispatcher = WebhookDispatcher(
                outbox: store, store: store, transport: backend,
                encoder: { event, message in Array("\(event.id) \(event.kind.rawValue) \(message?.content ?? "-")".utf8) },
                configuration: configuration, clock: clock
            )
        }

        var sent: [ScriptedBackend.Received] { backend.received.withLock { $0 } }
    }

    @Test("an event goes to its URL, signed over timestamp and body, with its id, type and attempt; the stored row is read for its body")
    func sendsSigned() async throws {
        let rig = Rig()
        let message = try await rig.store.append(draft("lobby", "hello")).message
        #expect(await rig.dispatcher.sendDue() == 1)
        let sent = try #require(rig.sent.first)
        #expect(sent.request.url == "http://backend.test/hook")
        #expect(String(decoding: sent.request.body, as: UTF8.self) == "\(sent.id) message hello")
        let headers = Dictionary(sent.request.headers, uniquingKeysWith: { a, _ in a })
        #expect(headers["Parley-Event-Type"] == "message" && headers["Parley-Attempt"] == "1" && headers["Content-Type"] == "application/json")
        let signature = try #require(headers["Parley-Signature"])
        #expect(signature.hasPrefix("t=\(rig.clock.now.milliseconds / 1000),v1="))
        #expect(WebhookSignature.verify(signature, body: sent.request.body, secret: Array("s3cret".utf8), now: rig.clock.now))
        // Forged body, other secret, replayed past the window: refused.
        #expect(!WebhookSignature.verify(signature, body: sent.request.body + [0x20], secret: Array("s3cret".utf8), now: rig.clock.now))
        #expect(!WebhookSignature.verify(signature, body: sent.request.body, secret: Array("other".utf8), now: rig.clock.now))
        #expect(!WebhookSignature.verify(signature, body: sent.request.body, secret: Array("s3cret".utf8), now: rig.clock.now.adding(milliseconds: 301_000)))
        // Delivered: gone from the outbox.
        #expect(try await rig.store.webhookBacklog() == 0)
        #expect(await rig.dispatcher.sendDue() == 0)
        _ = message
    }

    @Test("a failed event is retried with growing, jittered delays; its room's later events wait, other rooms do not")
    func retriesInOrder() async throws {
        let rig = Rig(maxAttempts: 10)
        _ = try await rig.store.append(draft("a", "a1"))
        _ = try await rig.store.append(draft("a", "a2"))
        _ = try await rig.store.append(draft("b", "b1"))
        rig.backend.script(1, [.success(500), .failure(.init()), .success(503)])
        // Room a's queue (a1, a2) and room b's (b1) are claimed; a1 fails, so a2 is not sent
        // but released behind it.
        #expect(await rig.dispatcher.sendDue() == 3)
        #expect(Set(rig.sent.map(\.id)) == ["1", "3"] && rig.sent.count == 2)  // rooms go at once, in either order
        // a2 waits behind a1's retry; the retry waits its delay (1 s, jittered to 0.5-1 s).
        #expect(await rig.dispatcher.sendDue() == 0)
        rig.clock.advance(by: .milliseconds(499))
        #expect(await rig.dispatcher.sendDue() == 0)
        rig.clock.advance(by: .milliseconds(501))
        #expect(await rig.dispatcher.sendDue() == 2)  // a1 again (no answer), a2 released again
        rig.clock.advance(by: .seconds(2))
        #expect(await rig.dispatcher.sendDue() == 2)  // a1: 503
        rig.clock.advance(by: .seconds(4))
        #expect(await rig.dispatcher.sendDue() == 2)  // a1 delivered, then a2 right behind it
        #expect(await rig.dispatcher.sendDue() == 0)
        #expect(rig.sent.map(\.id).filter { $0 != "3" } == ["1", "1", "1", "1", "2"])
        #expect(rig.sent.filter { $0.id == "1" }.map(\.attempt) == [1, 2, 3, 4])
        #expect(try await rig.store.webhookBacklog() == 0)
    }

    @Test("a room's queue goes in one claim, in order, one after the other")
    func queueInOneClaim() async throws {
        let rig = Rig()
        for index in 1...20 { _ = try await rig.store.append(draft("a", "m\(index)")) }
        // 16 per room per claim (`perRoom`), then the rest.
        #expect(await rig.dispatcher.sendDue() == 16)
        #expect(await rig.dispatcher.sendDue() == 4)
        #expect(rig.sent.map(\.id) == (1...20).map(String.init))
    }

    @Test("after its last attempt an event is a dead letter and its room goes on")
    func deadLetters() async throws {
        let rig = Rig(maxAttempts: 2)
        _ = try await rig.store.append(draft("a", "doomed"))
        _ = try await rig.store.append(draft("a", "next"))
        rig.backend.script(1, [.success(500), .success(500)])
        await rig.dispatcher.sendDue()
        rig.clock.advance(by: .seconds(1))
        // The second attempt spends the retries: dead, and "next" goes right behind it.
        await rig.dispatcher.sendDue()
        let dead = try await rig.store.deadWebhooks(limit: 10)
        #expect(dead.map(\.id) == [1] && dead[0].attempts == 2 && dead[0].lastError == "HTTP 500")
        #expect(rig.sent.map(\.id) == ["1", "1", "2"])
        #expect(try await rig.store.webhookBacklog() == 0)
    }

    @Test("an instance that dies mid-delivery leaves its event to another once the lease runs out")
    func leaseRunsOut() async throws {
        let rig = Rig()
        _ = try await rig.store.append(draft("a", "in flight"))
        // What a dying instance did: claimed it, never answered for it.
        let lost = try await rig.store.claimWebhooks(now: rig.clock.now, leaseUntil: rig.clock.now.adding(milliseconds: 60_000), limit: 10)
        #expect(lost.count == 1)
        #expect(await rig.dispatcher.sendDue() == 0)
        rig.clock.advance(by: .seconds(60))
        #expect(await rig.dispatcher.sendDue() == 1)
        #expect(rig.sent.map(\.id) == ["1"])
    }

    @Test("the retry delays double up to the cap, each between half and all of it")
    func backoff() {
        let base = Duration.seconds(1), cap = Duration.seconds(600)
        #expect(WebhookDispatcher.backoff(attempt: 1, base: base, cap: cap, random: 0) == .milliseconds(500))
        #expect(WebhookDispatcher.backoff(attempt: 1, base: base, cap: cap, random: 1) == .seconds(1))
        #expect(WebhookDispatcher.backoff(attempt: 4, base: base, cap: cap, random: 1) == .seconds(8))
        #expect(WebhookDispatcher.backoff(attempt: 30, base: base, cap: cap, random: 1) == .seconds(600))
        #expect(WebhookDispatcher.backoff(attempt: 1_000, base: base, cap: cap, random: 0) == .seconds(300))
    }

    @Test("a join, leave or read is queued by the engine; a stored message pokes the dispatcher")
    func engineQueues() async throws {
        let store = MemoryMessageStore()
        let pokes = Atomic<Int>(0)
        let selection = WebhookSelection(targets: 1, kinds: [.message, .join, .read])
        store.selectWebhooks(selection)
        let engine = Engine(
            store: store, broker: MemoryBroker(), presence: MemoryPresenceStore(),
            webhooks: Webhooks(outbox: store, selection: selection, notify: { pokes.add(1, ordering: .relaxed) }),
            clock: ManualClock()
        )
        let session = try engine.connect(Identity(user: "dave"), transport: "websocket", encoder: EngineStateTests.Recorder())
        try await engine.join(session, room: "dev", since: nil) { _ in }
        _ = try await engine.publish(Identity(user: "dave"), room: "dev", content: "hi", clientId: nil, session: session)
        try await engine.read(session, room: "dev", seq: 1)
        await engine.disconnect(session)  // leave: not selected
        let queued = try await store.claimWebhooks(now: .now, leaseUntil: .now, limit: 10)
        #expect(queued.map(\.kind) == [.join])  // one room: its oldest row only
        #expect(try await store.webhookBacklog() == 3)
        #expect(pokes.load(ordering: .relaxed) == 3)
    }
}
