import Foundation
import ParleyCore
import ParleyPostgres
import ParleySQLite
import ParleyTestSupport
import ServiceLifecycle
import Testing

/// A store under test, running as a service until `close`.
struct RunningStore: Sendable {
    let store: any MessageStore
    let group: ServiceGroup
    let task: Task<Void, any Error>
    /// Opens a new store on the same data, or nil when the kind keeps nothing.
    let reopen: @Sendable () async throws -> RunningStore?

    func close() async {
        await group.triggerGracefulShutdown()
        _ = try? await task.value
    }

    static func run(_ store: any MessageStore, reopen: @escaping @Sendable () async throws -> RunningStore?) -> RunningStore {
        let group = ServiceGroup(configuration: .init(services: [.init(service: store)], logger: .init(label: "test")))
        return RunningStore(store: store, group: group, task: Task { try await group.run() }, reopen: reopen)
    }
}

/// Every `MessageStore` implementation, by name. PostgreSQL joins when a server can be used
/// (see `PostgresTestServer`); `postgresStoreIsTested` reports when it cannot.
enum StoreKind: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case memory, sqlite, postgres

    static var allCases: [StoreKind] {
        PostgresTestServer.isAvailable ? [.memory, .sqlite, .postgres] : [.memory, .sqlite]
    }

    var testDescription: String { rawValue }

    func make(idempotencyWindow: Duration = .seconds(600)) async throws -> RunningStore {
        switch self {
        case .memory:
            return .run(MemoryMessageStore(idempotencyWindow: idempotencyWindow)) { nil }
        case .sqlite:
            let path = NSTemporaryDirectory() + "parley-store-\(UUID().uuidString).sqlite"
            @Sendable func open() async throws -> RunningStore {
                var configuration = SQLiteMessageStore.Configuration(path: path)
                configuration.idempotencyWindow = idempotencyWindow
                return .run(try await SQLiteMessageStore.open(configuration), reopen: open)
            }
            return try await open()
        case .postgres:
            let url = try await PostgresTestServer.shared().createDatabase()
            @Sendable func open() async throws -> RunningStore {
                var configuration = try PostgresStore.Configuration(url: url)
                configuration.idempotencyWindow = idempotencyWindow
                return .run(try await PostgresStore.open(configuration), reopen: open)
            }
            return try await open()
        }
    }
}

func withStore<T>(_ kind: StoreKind, idempotencyWindow: Duration = .seconds(600), _ body: (any MessageStore, RunningStore) async throws -> T) async throws -> T {
    let running = try await kind.make(idempotencyWindow: idempotencyWindow)
    do {
        let result = try await body(running.store, running)
        await running.close()
        return result
    } catch {
        await running.close()
        throw error
    }
}

func draft(_ room: String, _ content: String, user: String = "alice", clientId: String? = nil, at timestamp: Timestamp = .now) -> MessageDraft {
    MessageDraft(room: room, user: user, content: content, timestamp: timestamp, clientId: clientId)
}

@Suite("MessageStore behaviour")
struct MessageStoreSuite {
    @Test(
        "the PostgreSQL store is part of this suite",
        .enabled(if: PostgresTestServer.isAvailable, "PostgreSQL is not installed: install the postgresql package, set PARLEY_TEST_DATABASE_URL, or PARLEY_REQUIRE_POSTGRES=1 to fail")
    )
    func postgresStoreIsTested() {
        #expect(StoreKind.allCases.contains(.postgres))
    }

    @Test("seq starts at 1 and grows by one per room", arguments: StoreKind.allCases)
    func sequencePerRoom(kind: StoreKind) async throws {
        try await withStore(kind) { store, _ in
            #expect(try await store.lastSeq(room: "a") == 0)
            let a1 = try await store.append(draft("a", "one"))
            let b1 = try await store.append(draft("b", "uno"))
            let a2 = try await store.append(draft("a", "two"))
            #expect([a1.message.seq, b1.message.seq, a2.message.seq] == [1, 1, 2])
            #expect(a1.duplicate == false)
            #expect(try await store.lastSeq(room: "a") == 2)
            #expect(try await store.lastSeq(room: "b") == 1)
            let rooms = try await store.rooms()
            #expect(rooms.map(\.room) == ["a", "b"])
            #expect(rooms.map(\.seq) == [2, 1])
        }
    }

    @Test("read positions: a user's rooms with the last message, unread by others and mentions; positions only move forward and survive a restart", arguments: StoreKind.allCases)
    func readPositions(kind: StoreKind) async throws {
        try await withStore(kind) { store, running in
            #expect(try await store.inbox(user: "bob").isEmpty)
            try await store.addToInbox(user: "bob", room: "quiet", readSeq: 0)
            _ = try await store.append(draft("general", "hi all", user: "alice"))
            try await store.addToInbox(user: "bob", room: "general", readSeq: 1)
            _ = try await store.append(draft("general", "@bob, @bobby and @carol: look", user: "alice"))
            _ = try await store.append(draft("general", "mine", user: "bob"))
            _ = try await store.append(draft("general", "ping @bob.", user: "carol"))
            _ = try await store.append(draft("general", "for @bobby only", user: "carol"))
            // Adding a room that is listed already keeps its position.
            try await store.addToInbox(user: "bob", room: "general", readSeq: 0)
            var inbox = try await store.inbox(user: "bob")
            #expect(inbox.map(\.room) == ["general", "quiet"])
            #expect(inbox[0].readSeq == 1 && inbox[0].seq == 5 && inbox[0].lastMessage?.content == "for @bobby only")
            // Seqs 2, 4, 5 are others'; 2 and 4 mention bob ("@bobby" is someone else).
            #expect(inbox[0].unread == 3 && inbox[0].mentions == 2)
            #expect(inbox[1] == InboxEntry(room: "quiet", lastMessage: nil, readSeq: 0, unread: 0, mentions: 0))
            try await store.markRead(user: "bob", room: "general", seq: 4)
            try await store.markRead(user: "bob", room: "general", seq: 2)
            inbox = try await store.inbox(user: "bob")
            #expect(inbox[0].readSeq == 4 && inbox[0].unread == 1 && inbox[0].mentions == 0)
            // Reading a room not listed lists it.
            try await store.markRead(user: "bob", room: "elsewhere", seq: 0)
            #expect(try await store.inbox(user: "bob").map(\.room) == ["elsewhere", "general", "quiet"])
            #expect(try await store.inbox(user: "alice").isEmpty)
            if let reopened = try await running.reopen() {
                await running.close()
                let again = try await reopened.store.inbox(user: "bob")
                #expect(again.map(\.readSeq) == [0, 4, 0])
                await reopened.close()
            }
        }
    }

    @Test("search finds messages with every word, newest first, paged by id; words are never query syntax", arguments: StoreKind.allCases)
    func search(kind: StoreKind) async throws {
        try await withStore(kind) { store, running in
            let start = Timestamp.now.milliseconds
            var ids: [String] = []
            for (index, (room, content)) in [
                ("a", "The deploy is DONE"), ("b", "deploy failed: rollback"), ("a", "lunch?"),
                ("c", "deploy done, finally"), ("a", "undeployed"), ("b", "\"deploy\" OR * NEAR done"),
            ].enumerated() {
                ids.append(try await store.append(draft(room, content, at: Timestamp(milliseconds: start + Int64(index)))).message.id)
            }
            func found(_ text: String, before: String? = nil, limit: Int = 10) async throws -> [String] {
                try await store.search(terms: SearchTerms.words(text), before: before, limit: limit).map(\.content)
            }
            #expect(try await found("deploy") == ["\"deploy\" OR * NEAR done", "deploy done, finally", "deploy failed: rollback", "The deploy is DONE"])
            #expect(try await found("Done DEPLOY") == ["\"deploy\" OR * NEAR done", "deploy done, finally", "The deploy is DONE"])
            #expect(try await found("deploy", limit: 2) == ["\"deploy\" OR * NEAR done", "deploy done, finally"])
            #expect(try await found("deploy", before: ids[3], limit: 2) == ["deploy failed: rollback", "The deploy is DONE"])
            // Operators of FTS5 or tsquery are plain words here.
            #expect(try await found("\" OR *") == ["\"deploy\" OR * NEAR done"])
            #expect(try await found("deploy NOT done").isEmpty)
            #expect(try await found("rollback")[0] == "deploy failed: rollback")
            #expect(try await found("nothing-here").isEmpty)
            if let reopened = try await running.reopen() {
                await running.close()
                #expect(try await reopened.store.search(terms: ["lunch"], before: nil, limit: 5).map(\.content) == ["lunch?"])
                await reopened.close()
            }
        }
    }

    @Test("concurrent appends get gapless, unique seqs", arguments: StoreKind.allCases)
    func concurrentAppends(kind: StoreKind) async throws {
        try await withStore(kind) { store, _ in
            let seqs = try await withThrowingTaskGroup(of: Int64.self) { group in
                for index in 0..<300 {
                    group.addTask { try await store.append(draft(index % 2 == 0 ? "even" : "odd", "m\(index)")).message.seq }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(seqs.count == 300)
            let page = try await store.history(room: "even", query: HistoryQuery(limit: 100))
            #expect(page.messages.map(\.seq) == Array(51...150).map(Int64.init))
            #expect(try await store.lastSeq(room: "even") == 150)
            #expect(try await store.lastSeq(room: "odd") == 150)
            #expect(Set(seqs).count == 150)
        }
    }

    @Test("a reused clientId returns the original without storing", arguments: StoreKind.allCases)
    func idempotency(kind: StoreKind) async throws {
        try await withStore(kind) { store, _ in
            let first = try await store.append(draft("r", "hello", clientId: "c1"))
            let retry = try await store.append(draft("r", "hello again", clientId: "c1"))
            #expect(retry.duplicate)
            #expect(retry.message == first.message)
            let otherUser = try await store.append(draft("r", "hello", user: "bob", clientId: "c1"))
            let otherRoom = try await store.append(draft("s", "hello", clientId: "c1"))
            #expect(!otherUser.duplicate && otherUser.message.seq == 2)
            #expect(!otherRoom.duplicate && otherRoom.message.seq == 1)
            #expect(try await store.lastSeq(room: "r") == 2)
        }
    }

    @Test("concurrent retries of one clientId store it once", arguments: StoreKind.allCases)
    func concurrentRetries(kind: StoreKind) async throws {
        try await withStore(kind) { store, _ in
            let results = try await withThrowingTaskGroup(of: AppendResult.self) { group in
                for _ in 0..<20 { group.addTask { try await store.append(draft("r", "same", clientId: "dup")) } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(Set(results.map(\.message)).count == 1)
            #expect(results.filter { !$0.duplicate }.count == 1)
            #expect(try await store.lastSeq(room: "r") == 1)
        }
    }

    @Test("a clientId is forgotten after the idempotency window", arguments: StoreKind.allCases)
    func idempotencyWindow(kind: StoreKind) async throws {
        try await withStore(kind, idempotencyWindow: .seconds(60)) { store, _ in
            let old = Timestamp.now.adding(milliseconds: -61_000)
            _ = try await store.append(draft("r", "long ago", clientId: "c1", at: old))
            let fresh = try await store.append(draft("r", "again", clientId: "c1"))
            #expect(!fresh.duplicate)
            #expect(fresh.message.seq == 2)
        }
    }

    @Test("history pages ascend and say whether more exist", arguments: StoreKind.allCases)
    func historyPaging(kind: StoreKind) async throws {
        try await withStore(kind) { store, _ in
            for index in 1...10 { _ = try await store.append(draft("h", "m\(index)")) }
            func page(_ before: Int64?, _ after: Int64?, _ limit: Int) async throws -> ([Int64], Bool) {
                let page = try await store.history(room: "h", query: HistoryQuery(before: before, after: after, limit: limit))
                return (page.messages.map(\.seq), page.hasMore)
            }
            #expect(try await page(nil, nil, 4) == ([7, 8, 9, 10], true))
            #expect(try await page(nil, nil, 10) == (Array(1...10), false))
            #expect(try await page(7, nil, 4) == ([3, 4, 5, 6], true))
            #expect(try await page(3, nil, 4) == ([1, 2], false))
            #expect(try await page(nil, 0, 3) == ([1, 2, 3], true))
            #expect(try await page(nil, 8, 3) == ([9, 10], false))
            #expect(try await page(nil, 10, 3) == ([], false))
            #expect(try await page(8, 2, 3) == ([3, 4, 5], true))
            #expect(try await page(6, 2, 3) == ([3, 4, 5], false))
            #expect(try await page(1, nil, 5) == ([], false))
            let empty = try await store.history(room: "never", query: HistoryQuery(limit: 50))
            #expect(empty.messages.isEmpty && !empty.hasMore)
        }
    }

    @Test("cursors at the ends of the 64-bit range select nothing or everything, never trap", arguments: StoreKind.allCases)
    func extremeCursors(kind: StoreKind) async throws {
        try await withStore(kind) { store, _ in
            for index in 1...3 { _ = try await store.append(draft("x", "m\(index)")) }
            func page(_ before: Int64?, _ after: Int64?) async throws -> [Int64] {
                try await store.history(room: "x", query: HistoryQuery(before: before, after: after, limit: 10)).messages.map(\.seq)
            }
            let max = Int64.max
            #expect(try await page(nil, max) == [])
            #expect(try await page(nil, max - 1) == [])
            #expect(try await page(max, nil) == [1, 2, 3])
            #expect(try await page(max, max) == [])
            #expect(try await page(max, max - 1) == [])
            #expect(try await page(max, 0) == [1, 2, 3])
            #expect(try await page(0, nil) == [])
            #expect(try await page(Int64.min, Int64.min) == [])
            #expect(try await page(nil, Int64.min) == [1, 2, 3])
        }
    }

    @Test("messages keep every field exactly", arguments: StoreKind.allCases)
    func roundTrip(kind: StoreKind) async throws {
        try await withStore(kind) { store, _ in
            let content = "Ça marche 👍🏽 \"quoted\" \\ back\nslash <img src=x onerror=alert(1)> \u{1}\u{7f}"
            let stored = try await store.append(draft("r", content, user: "zoé", clientId: "ключ"))
            let read = try await store.history(room: "r", query: HistoryQuery(limit: 1)).messages
            #expect(read == [stored.message])
        }
    }

    @Test("committed messages survive a reopen and seq continues", arguments: StoreKind.allCases)
    func durability(kind: StoreKind) async throws {
        let running = try await kind.make()
        _ = try await running.store.append(draft("d", "one"))
        let two = try await running.store.append(draft("d", "two", clientId: "k"))
        await running.close()
        guard let reopened = try await running.reopen() else { return }  // memory keeps nothing
        defer { Task { await reopened.close() } }
        #expect(try await reopened.store.history(room: "d", query: HistoryQuery(limit: 10)).messages.map(\.content) == ["one", "two"])
        #expect(try await reopened.store.append(draft("d", "three")).message.seq == 3)
        let retry = try await reopened.store.append(draft("d", "two", clientId: "k"))
        #expect(retry.duplicate && retry.message == two.message)
        await reopened.close()
    }
}
