import ArgumentParser
import Foundation
import Logging
import ParleyCore
import ParleyPostgres
import ParleySQLite
import ServiceLifecycle

/// `parley bench-store`: appends per second straight into the SQLite store, without network.
struct BenchStore: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-store",
        abstract: "Measure durable appends per second of the SQLite store, or of PostgreSQL with --database (group commit)."
    )

    @Option(help: "Concurrent publishers, each waiting for its append before the next.") var publishers = 1
    @Option(help: "Seconds to run.") var duration: Double = 5
    @Option(help: "Message content size in bytes.") var size = 100
    @Option(help: "Rooms the publishers write to.") var rooms = 1
    @Option(help: "full or normal.") var synchronous = "full"
    @Option(help: "Folder for the database file (a new file each run).") var dataDir = NSTemporaryDirectory()
    @Option(help: "Measure the PostgreSQL store at this URL instead (rooms get a fresh prefix each run).") var database: String?

    func run() async throws {
        if let database {
            let store = try await PostgresStore.open(try PostgresStore.Configuration(url: database), logger: quietLogger)
            let (rate, total, seconds, perCommit) = try await measure(store, roomPrefix: "bench-\(UUID().uuidString.prefix(8))") {
                store.stats.withLock { $0 }
            }
            print(String(
                format: "%d publishers, PostgreSQL: %.0f appends/s (%d in %.1f s), %.1f appends per commit",
                publishers, rate, total, seconds, perCommit
            ))
            return
        }
        let path = URL(fileURLWithPath: dataDir).appendingPathComponent("bench-\(UUID().uuidString).sqlite").path
        var configuration = SQLiteMessageStore.Configuration(path: path)
        configuration.synchronous = synchronous == "normal" ? .normal : .full
        let store = try await SQLiteMessageStore.open(configuration, logger: quietLogger)
        let (rate, total, seconds, perCommit) = try await measure(store, roomPrefix: "room") { store.stats.withLock { $0 } }
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
        print(String(
            format: "%d publishers, synchronous=%@: %.0f appends/s (%d in %.1f s), %.1f appends per commit",
            publishers, configuration.synchronous.rawValue, rate, total, seconds, perCommit
        ))
    }

    /// Runs the store as a service, appends from every publisher for `duration`, stops it, and
    /// returns appends per second, the total, the seconds taken and appends per commit.
    private func measure(
        _ store: some MessageStore, roomPrefix: String, stats: () -> (batches: Int, appends: Int)
    ) async throws -> (rate: Double, total: Int, seconds: Double, perCommit: Double) {
        let group = ServiceGroup(configuration: .init(services: [.init(service: store)], logger: quietLogger))
        let running = Task { try await group.run() }
        let content = String(repeating: "x", count: size)
        let deadline = ContinuousClock.now + .milliseconds(Int(duration * 1000))
        let start = ContinuousClock.now
        let (publishers, rooms) = (self.publishers, self.rooms)
        let total = try await withThrowingTaskGroup(of: Int.self) { tasks in
            for index in 0..<publishers {
                tasks.addTask {
                    var count = 0
                    while ContinuousClock.now < deadline {
                        _ = try await store.append(MessageDraft(
                            room: "\(roomPrefix)-\(index % rooms)", user: "u\(index)", content: content, clientId: "c\(index)-\(count)"
                        ))
                        count += 1
                    }
                    return count
                }
            }
            return try await tasks.reduce(0, +)
        }
        let elapsed = ContinuousClock.now - start
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let committed = stats()
        await group.triggerGracefulShutdown()
        _ = try? await running.value
        return (Double(total) / seconds, total, seconds, Double(committed.appends) / Double(max(committed.batches, 1)))
    }
}
