import ArgumentParser
import Foundation
import Histogram
import ParleyCore
import ParleyPostgres
import ParleySQLite
import ServiceLifecycle

/// `parley bench-reads`: the read side of conversations, straight against a store: fills it
/// with `--messages` over `--rooms` (one user follows every room), then measures the latency of
/// the user's room list with unread counts, of full-text searches of three selectivities, and of
/// history pages of a room whose messages were edited, reacted to and replied to.
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
    @Flag(help: "Keep the SQLite file (its path is printed), to look into it.") var keep = false

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
            if let path, !keep { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
            if let path, keep { FileHandle.standardError.write(Data("kept \(path)\n".utf8)) }
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
        // History: a plain room's latest page, then a room as busy with changes as a chat gets.
        let plain = "\(prefix)-0"
        let plainPage = try await measure { _ = try await store.history(room: plain, query: HistoryQuery(limit: 50)) }
        print("history, latest 50 of a room of messages only: \(plainPage.line)")
        let busy = "\(prefix)-changes"
        let rows = try await fillChanges(store, room: busy)
        let busyPage = try await measure { _ = try await store.history(room: busy, query: HistoryQuery(limit: 50)) }
        print("history, latest 50 rows of a room of \(rows) rows with edits, reactions and replies: \(busyPage.line)")
        let middle = try await measure { _ = try await store.history(room: busy, query: HistoryQuery(before: rows / 2, limit: 50)) }
        print("history, 50 rows from its middle: \(middle.line)")
        await group.triggerGracefulShutdown()
        _ = try? await running.value
    }

    /// 1,000 messages; each gets 3 reactions, every second one an edit, every fifth answers the
    /// one before it, every tenth is deleted: the room's rows interleave messages and changes.
    private func fillChanges(_ store: any MessageStore, room: String) async throws -> Int64 {
        var last: Message?  // the newest message not deleted
        var seq: Int64 = 0
        for index in 0..<1_000 {
            var draft = MessageDraft(room: room, user: "u\(index % 7)", content: "message \(index) with some words in it")
            if index % 5 == 0, let last { draft.replyTo = last.id }
            let message = try await store.append(draft).message
            seq = message.seq
            func change(_ action: MessageChange.Action, _ content: String, by user: String) async throws {
                let change = MessageChange(target: message.id, action: action)
                seq = try await store.append(MessageDraft(room: room, user: user, content: content, change: change)).message.seq
            }
            for (emoji, user) in [("👍", "u1"), ("🎉", "u2"), ("👍", "u3")] { try await change(.react(.add), emoji, by: user) }
            if index % 2 == 0 { try await change(.edit, "message \(index), edited", by: message.user) }
            if index % 10 == 9 {
                try await change(.delete, "", by: message.user)
            } else {
                last = message
            }
        }
        return seq
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
