import Logging
import NIOPosix
import SQLiteNIO

/// The threads the embedded stores block on: SQLite's statements and commits (an `fsync`
/// each), and attachment file I/O. NIO's shared pool has a thread per core (two here), so a
/// couple of slow `fsync`s on a busy disk left every other query of the process waiting;
/// threads that wait on the disk cost no CPU, so the stores have eight of their own, for the
/// life of the process.
public enum StorageThreads {
    public static let pool: NIOThreadPool = {
        let pool = NIOThreadPool(numberOfThreads: 8)
        pool.start()
        return pool
    }()

    static func open(_ path: String, on threads: NIOThreadPool = pool, logger: Logger) async throws -> SQLiteConnection {
        try await SQLiteConnection.open(
            storage: .file(path: path), threadPool: threads, logger: logger, on: MultiThreadedEventLoopGroup.singleton.any()
        )
    }
}
