import ArgumentParser
import Foundation
import Histogram
import ParleyCore
import ParleyPostgres
import ParleySQLite
import ServiceLifecycle

/// `parley bench-reads`: the read side of conversations, straight against a store: fills it
/// with `--messages` over `--rooms` (one user follows every room), then measures the latency of
/// the user's room list with unread counts and of full-text searches of three selectivities.
struct BenchReads: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-reads",
        abstract: "Measure unread listing and search latency of the SQLite store, or of PostgreSQL with --database."
    )

    @Option(help: "Messages to store first.") var messages = 1_000_000
    @Option(help: "Rooms they are spread over; the reading user follows all of them.") var rooms = 1_000
    @Option(help: "Times each read is measured.") var iterations = 200
    @Option(help: "Folder for the database file (a new file each run).") var dataDir = NSTemporaryDirectory()
    @Option(help: "Measure the PostgreSQL store at this URL instead (a fresh room prefix each run).") var database: String?

    func run() async throws {
        let store: any MessageStore
        var path: String?
        if let database {
            store = try await PostgresStore.open(try PostgresStore.Configuration(url: database), logger: quietLogger)
        } else {
            path = URL(fileURLWithPath: dataDir).appendingPathComponent("bench-\(UUID().uuidString).sqlite").path
            var configuration = SQLiteMessageStore.Configuration(path: path!)
            configuration.synchronous = .normal
            store = try await SQLiteMessageStore.open(configuration, logger: quietLogger)
        }
        let group = ServiceGroup(configuration: .init(services: [.init(service: store)], logger: quietLogger))
        let running = Task { try await group.run() }
        defer {
            if let path { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
        }
        let prefix = "r\(UUID().uuidString.prefix(6).lowercased())"
        let reader = "reader-\(prefix)"
        let fillStart = ContinuousClock.now
        try await fill(store, prefix: prefix, reader: reader)
        FileHandle.standardError.write(Data("stored \(messages) messages over \(rooms) rooms in \(ContinuousClock.now - fillStart)\n".utf8))

        let inbox = try await measure { _ = try await store.inbox(user: reader) }
        print("unread listing of \(rooms) rooms: \(inbox.line)")
        // A word in one message, in one message of 1,000, and in one of 10.
        for (label, word) in [("1 match", "unique\(messages / 2)"), ("1 in 1,000", "word\(7)"), ("1 in 10", "common")] {
            let search = try await measure { _ = try await store.search(terms: [word], before: nil, limit: 50) }
            print("search '\(word)' (\(label)), 50 newest: \(search.line)")
        }
        await group.triggerGracefulShutdown()
        _ = try? await running.value
    }

    /// Appends from 64 writers (group commit), each message with a word of a 1,000-word
    /// vocabulary, `common` in every tenth and a unique word; the reader's positions sit halfway.
    private func fill(_ store: any MessageStore, prefix: String, reader: String) async throws {
        let (messages, rooms) = (self.messages, self.rooms)
        let writers = 64
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            for writer in 0..<writers {
                tasks.addTask {
                    var index = writer
                    while index < messages {
                        let words = "word\(index % 1_000) unique\(index)" + (index % 10 == 0 ? " common" : "")
                        _ = try await store.append(MessageDraft(
                            room: "\(prefix)-\(index % rooms)", user: "u\(index % 97)",
                            content: "message \(index): \(words) @\(reader)"
                        ))
                        index += writers
                    }
                }
            }
            try await tasks.waitForAll()
        }
        for room in 0..<rooms {
            try await store.markRead(user: reader, room: "\(prefix)-\(room)", seq: Int64(messages / rooms / 2))
        }
    }

    private func measure(_ body: () async throws -> Void) async throws -> LatencySummary {
        var histogram = Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
        for _ in 0..<iterations {
            let start = ContinuousClock.now
            try await body()
            let elapsed = ContinuousClock.now - start
            histogram.record(UInt64(max(0, elapsed.components.seconds * 1_000_000 + elapsed.components.attoseconds / 1_000_000_000_000)))
        }
        return LatencySummary(histogram)
    }
}
