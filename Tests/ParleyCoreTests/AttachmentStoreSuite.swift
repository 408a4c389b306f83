import Foundation
import NIOCore
@testable import ParleyCore
import ParleyPostgres
import ParleySQLite
import ParleyTestSupport
import ServiceLifecycle
import Testing

/// Every `AttachmentStore`, by name: memory, files with SQLite metadata, PostgreSQL.
enum AttachmentStoreKind: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case memory, files, postgres

    static var allCases: [AttachmentStoreKind] {
        PostgresTestServer.isAvailable ? [.memory, .files, .postgres] : [.memory, .files]
    }

    var testDescription: String { rawValue }

    func make() async throws -> (any AttachmentStore, directory: String?) {
        switch self {
        case .memory:
            return (MemoryAttachmentStore(), nil)
        case .files:
            let directory = NSTemporaryDirectory() + "parley-attachments-\(UUID().uuidString)"
            return (try await FileAttachmentStore.open(directory: directory), directory)
        case .postgres:
            let url = try await PostgresTestServer.shared().createDatabase()
            return (try await PostgresStore.open(try PostgresStore.Configuration(url: url)), nil)
        }
    }
}

/// A body that yields `data` in pieces of `piece` bytes, then fails if `failAfter` says so.
struct TestBody: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let data: [UInt8]
    var piece = 10_000
    var failAfter: Int?

    struct Cut: Error {}

    struct AsyncIterator: AsyncIteratorProtocol {
        let body: TestBody
        var offset = 0

        mutating func next() async throws -> ByteBuffer? {
            if let failAfter = body.failAfter, offset >= failAfter { throw Cut() }
            guard offset < body.data.count else { return nil }
            let end = Swift.min(offset + body.piece, body.data.count)
            defer { offset = end }
            return ByteBuffer(bytes: body.data[offset..<end])
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(body: self) }
}

func withAttachmentStore(_ kind: AttachmentStoreKind, _ body: (any AttachmentStore) async throws -> Void) async throws {
    let (store, directory) = try await kind.make()
    let group = ServiceGroup(configuration: .init(services: [.init(service: store)], logger: .init(label: "test")))
    let task = Task { try await group.run() }
    defer { if let directory { try? FileManager.default.removeItem(atPath: directory) } }
    do {
        try await body(store)
    } catch {
        await group.triggerGracefulShutdown()
        _ = try? await task.value
        throw error
    }
    await group.triggerGracefulShutdown()
    _ = try? await task.value
}

func bytes(of chunks: ByteChunks) async throws -> [UInt8] {
    var all: [UInt8] = []
    for try await chunk in chunks { all += chunk.readableBytesView }
    return all
}

@Suite("AttachmentStore behaviour")
struct AttachmentStoreSuite {
    static let now = Timestamp(milliseconds: 1_800_000_000_000)

    func upload(_ room: String = "r", user: String = "alice", name: String = "f.bin", max: Int64 = 1 << 24, at: Timestamp = now) -> UploadRequest {
        UploadRequest(room: room, user: user, name: name, duration: nil, maxBytes: max, timestamp: at)
    }

    @Test("bytes round-trip whole and in ranges across chunks; equal bytes are kept once and live while one attachment uses them", arguments: AttachmentStoreKind.allCases)
    func storeAndRead(kind: AttachmentStoreKind) async throws {
        try await withAttachmentStore(kind) { store in
            let data = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
            let first = try await store.store(upload(name: "a/../data.bin"), body: TestBody(data: data, piece: 7_777))
            #expect(first.size == 300_000 && first.name == "data.bin" && first.type == "application/octet-stream" && first.digest.count == 64)
            #expect(try await store.attachment(id: first.id) == first)
            #expect(try await bytes(of: store.read(first, range: 0..<300_000)) == data)
            #expect(try await bytes(of: store.read(first, range: 65_000..<200_123)) == Array(data[65_000..<200_123]))
            #expect(try await bytes(of: store.read(first, range: 299_990..<300_000)) == Array(data[299_990...]))
            let twin = try await store.store(upload(user: "bob"), body: TestBody(data: data))
            #expect(twin.digest == first.digest && twin.id != first.id)
            // Attach the first, delete its message: the twin still reads.
            _ = try await store.attach(ids: [first.id], room: "r", user: "alice", message: "m1", clientId: nil)
            try await store.deleteAttachments(of: "m1")
            #expect(try await store.attachment(id: first.id) == nil)
            #expect(try await bytes(of: store.read(twin, range: 0..<300_000)) == data)
            #expect(try await store.bytesUploaded(by: "bob", since: Self.now) == 300_000)
        }
    }

    @Test("too large is refused and an upload cut off leaves nothing; orphans go, attached files stay", arguments: AttachmentStoreKind.allCases)
    func limitsAndLifecycle(kind: AttachmentStoreKind) async throws {
        try await withAttachmentStore(kind) { store in
            let data = [UInt8](repeating: 1, count: 100_000)
            await #expect(throws: ParleyError.self) { try await store.store(upload(max: 50_000), body: TestBody(data: data)) }
            await #expect(throws: (any Error).self) { try await store.store(upload(), body: TestBody(data: data, failAfter: 60_000)) }
            #expect(try await store.bytesUploaded(by: "alice", since: Timestamp(milliseconds: 0)) == 0)
            let old = try await store.store(upload(at: Timestamp(milliseconds: Self.now.milliseconds - 7_200_000)), body: TestBody(data: data))
            let kept = try await store.store(upload(at: Timestamp(milliseconds: Self.now.milliseconds - 7_200_000)), body: TestBody(data: [2, 3]))
            let fresh = try await store.store(upload(), body: TestBody(data: [4]))
            _ = try await store.attach(ids: [kept.id], room: "r", user: "alice", message: "m", clientId: "c1")
            #expect(try await store.deleteOrphans(uploadedBefore: Timestamp(milliseconds: Self.now.milliseconds - 3_600_000)) == 1)
            #expect(try await store.attachment(id: old.id) == nil)
            #expect(try await store.attachment(id: kept.id)?.message == "m")
            #expect(try await store.attachment(id: fresh.id) != nil)
        }
    }

    @Test("many messages attach their files at once: each gets its own", arguments: AttachmentStoreKind.allCases)
    func concurrentAttach(kind: AttachmentStoreKind) async throws {
        try await withAttachmentStore(kind) { store in
            var files: [ParleyCore.Attachment] = []
            for index in 0..<20 { files.append(try await store.store(upload(), body: TestBody(data: [UInt8(index)]))) }
            let attached = try await withThrowingTaskGroup(of: ParleyCore.Attachment.self) { group in
                for (index, file) in files.enumerated() {
                    group.addTask { try await store.attach(ids: [file.id], room: "r", user: "alice", message: "m\(index)", clientId: nil)[0] }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(Set(attached.compactMap(\.message)).count == 20)
        }
    }

    @Test("attach: only the uploader's, in the room, once; a retry with the same clientId is accepted; detach undoes", arguments: AttachmentStoreKind.allCases)
    func attachRules(kind: AttachmentStoreKind) async throws {
        try await withAttachmentStore(kind) { store in
            let file = try await store.store(upload(), body: TestBody(data: [1, 2, 3]))
            await #expect(throws: ParleyError.self) { try await store.attach(ids: [file.id], room: "r", user: "bob", message: "m", clientId: nil) }
            await #expect(throws: ParleyError.self) { try await store.attach(ids: [file.id], room: "other", user: "alice", message: "m", clientId: nil) }
            await #expect(throws: ParleyError.self) { try await store.attach(ids: ["01NOSUCH"], room: "r", user: "alice", message: "m", clientId: nil) }
            #expect(try await store.attach(ids: [file.id], room: "r", user: "alice", message: "m1", clientId: "c")[0].message == "m1")
            #expect(try await store.attach(ids: [file.id], room: "r", user: "alice", message: "m2", clientId: "c")[0].message == "m1")
            await #expect(throws: ParleyError.self) { try await store.attach(ids: [file.id], room: "r", user: "alice", message: "m3", clientId: "d") }
            try await store.detach(message: "m1")
            #expect(try await store.attachment(id: file.id)?.message == nil)
            #expect(try await store.attach(ids: [file.id], room: "r", user: "alice", message: "m4", clientId: nil)[0].message == "m4")
        }
    }
}

@Suite("Attachments in the engine and on disk")
struct AttachmentLifecycleTests {
    @Test("the engine deletes uploads left out of messages once they are older than the limit, and keeps shared ones")
    func orphans() async throws {
        let clock = ManualClock()
        let files = MemoryAttachmentStore()
        let engine = Engine(store: MemoryMessageStore(), broker: MemoryBroker(), presence: MemoryPresenceStore(), attachments: files, clock: clock)
        let alice = Identity(user: "alice")
        let shared = try await engine.upload(alice, room: "r", name: "a.txt", duration: nil, declaredLength: nil, body: TestBody(data: Array("hello".utf8)))
        let unused = try await engine.upload(alice, room: "r", name: "b.txt", duration: nil, declaredLength: nil, body: TestBody(data: Array("bye".utf8)))
        #expect(shared.type == "text/plain")
        let message = try await engine.publish(alice, room: "r", content: "", clientId: nil, attachments: [shared.id]).message
        #expect(message.attachments.map(\.id) == [shared.id])
        clock.advance(by: .seconds(3599))
        await engine.deleteOrphanAttachments()
        #expect(try await files.attachment(id: unused.id) != nil)
        clock.advance(by: .seconds(2))
        await engine.deleteOrphanAttachments()
        #expect(try await files.attachment(id: unused.id) == nil)
        #expect(try await files.attachment(id: shared.id) != nil)
        // Too large by its declared length: refused before a byte is read.
        await #expect(throws: ParleyError.self) {
            try await engine.upload(alice, room: "r", name: "big", duration: nil, declaredLength: 26 * 1024 * 1024, body: TestBody(data: [], failAfter: 0))
        }
    }

    @Test("a file left half written by a crash is removed when the store opens, and was never served")
    func crashLeftovers() async throws {
        let directory = NSTemporaryDirectory() + "parley-attachments-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try await FileAttachmentStore.open(directory: directory).close()
        #expect(FileManager.default.createFile(atPath: directory + "/tmp/01HALFWRITTEN", contents: Data(repeating: 7, count: 1000)))
        let reopened = try await FileAttachmentStore.open(directory: directory)
        #expect((try FileManager.default.contentsOfDirectory(atPath: directory + "/tmp")).isEmpty)
        #expect(try await reopened.attachment(id: "01HALFWRITTEN") == nil)
        await reopened.close()
    }
}

@Suite("Content sniffing")
struct ContentSnifferTests {
    @Test("types from magic numbers, never from names; image sizes from headers")
    func sniffing() {
        let png: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13, 73, 72, 68, 82, 0, 0, 2, 128, 0, 0, 1, 224]
        #expect(ContentSniffer.sniff(png) == "image/png")
        #expect(ContentSniffer.dimensions(png, type: "image/png")! == (640, 480))
        let gif = Array("GIF89a".utf8) + [0x40, 0x01, 0xF0, 0x00]
        #expect(ContentSniffer.dimensions(gif, type: ContentSniffer.sniff(gif))! == (320, 240))
        let jpeg: [UInt8] = [0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 0, 0, 0xFF, 0xC0, 0, 11, 8, 0, 30, 0, 40, 3, 0, 0, 0]
        #expect(ContentSniffer.sniff(jpeg) == "image/jpeg" && ContentSniffer.dimensions(jpeg, type: "image/jpeg")! == (40, 30))
        #expect(ContentSniffer.sniff(Array("<svg onload=alert(1)>".utf8)) == "text/plain")
        #expect(ContentSniffer.sniff(Array("<html><script>".utf8)) == "text/plain")
        #expect(ContentSniffer.sniff([0x1A, 0x45, 0xDF, 0xA3, 1], declaredAudio: true) == "audio/webm")
        #expect(ContentSniffer.sniff(Array("OggS".utf8)) == "audio/ogg")
        #expect(ContentSniffer.sniff([0, 1, 2, 3]) == "application/octet-stream")
        #expect(!ContentSniffer.isInline("text/plain") && !ContentSniffer.isInline("image/svg+xml") && ContentSniffer.isInline("image/png"))
        #expect(ContentSniffer.isInline("audio/webm") && !ContentSniffer.isInline("video/mp4") && !ContentSniffer.isInline("application/pdf"))
        #expect(AttachmentName.clean("../../etc/passwd") == "passwd" && AttachmentName.clean("a\u{0}b\"c.txt") == "abc.txt" && AttachmentName.clean("..") == "file")
    }
}
