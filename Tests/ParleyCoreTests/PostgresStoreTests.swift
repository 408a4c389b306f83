import Foundation
import ParleyCore
import ParleyPostgres
import ParleyTestSupport
import Testing

/// What only a shared store must do: hold its guarantees across instances, and fail (never
/// falsely acknowledge) while the database is down.
@Suite(
    "PostgreSQL store across instances",
    .serialized,
    .enabled(if: PostgresTestServer.isAvailable, "PostgreSQL is not installed (PARLEY_REQUIRE_POSTGRES=1 makes this a failure)")
)
struct PostgresStoreTests {
    func open(_ url: String, timeout: Duration = .seconds(5)) async throws -> RunningStore {
        var configuration = try PostgresStore.Configuration(url: url)
        configuration.operationTimeout = timeout
        return .run(try await PostgresStore.open(configuration)) { nil }
    }

    @Test("two instances appending to one room get one gapless sequence")
    func twoInstancesShareSeq() async throws {
        let url = try await PostgresTestServer.shared().createDatabase()
        let (a, b) = (try await open(url), try await open(url))
        defer { Task { await a.close(); await b.close() } }
        let seqs = try await withThrowingTaskGroup(of: Int64.self) { group in
            for index in 0..<200 {
                let store = index % 2 == 0 ? a.store : b.store
                group.addTask { try await store.append(draft("shared", "m\(index)", user: "u\(index % 7)")).message.seq }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(seqs.sorted() == Array(1...200).map(Int64.init))
        let page = try await a.store.history(room: "shared", query: HistoryQuery(after: 0, limit: 100))
        #expect(page.messages.map(\.seq) == Array(1...100).map(Int64.init))
        #expect(try await b.store.lastSeq(room: "shared") == 200)
        await a.close()
        await b.close()
    }

    @Test("two instances racing one clientId store it once")
    func idempotencyAcrossInstances() async throws {
        let url = try await PostgresTestServer.shared().createDatabase()
        let (a, b) = (try await open(url), try await open(url))
        for round in 0..<10 {
            let results = try await withThrowingTaskGroup(of: AppendResult.self) { group in
                for index in 0..<6 {
                    let store = index % 2 == 0 ? a.store : b.store
                    group.addTask { try await store.append(draft("r", "same", clientId: "k\(round)")) }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(Set(results.map(\.message)).count == 1)
            #expect(results.filter { !$0.duplicate }.count == 1)
        }
        #expect(try await a.store.lastSeq(room: "r") == 10)
        await a.close()
        await b.close()
    }

    @Test(
        "appends fail while PostgreSQL is down and succeed once it is back",
        .enabled(if: PostgresTestServer.canStartPrivate, "needs a private PostgreSQL (the postgresql package)")
    )
    func databaseOutage() async throws {
        try await withHeavyTestLock { try await outage() }
    }

    func outage() async throws {
        let server = try await PostgresTestServer.start()
        defer { server.destroy() }
        let running = try await open(server.url, timeout: .seconds(3))
        let first = try await running.store.append(draft("o", "before"))
        #expect(first.message.seq == 1)

        try await server.stop()
        for attempt in 0..<2 {
            do {
                let result = try await running.store.append(draft("o", "during \(attempt)", clientId: "d\(attempt)"))
                Issue.record("an append was acknowledged while the database was down: \(result)")
            } catch let error as ParleyError {
                #expect(error.code == .unavailable)
            }
        }
        await #expect(throws: ParleyError.self) { try await running.store.lastSeq(room: "o") }

        try await server.launch()
        var recovered: AppendResult?
        for _ in 0..<40 where recovered == nil {
            recovered = try? await running.store.append(draft("o", "after", clientId: "d0"))
            if recovered == nil { try await Task.sleep(for: .milliseconds(250)) }
        }
        // Nothing from the outage was stored: the retried clientId is new, and seq is gapless.
        #expect(recovered?.duplicate == false)
        #expect(recovered?.message.seq == 2)
        let history = try await running.store.history(room: "o", query: HistoryQuery(limit: 10)).messages
        #expect(history.map(\.content) == ["before", "after"])
        await running.close()
    }
}
