import Foundation
import GRPCCore
import ParleyCore
import ParleyGRPC
import ServiceLifecycle
import Synchronization
import Testing

/// A message store that works until told to fail, like a database that goes away.
final class FlakyStore: MessageStore {
    private let inner = MemoryMessageStore()
    private let failing = Atomic<Bool>(false)
    /// `lastSeq` calls so far (what readiness checks query).
    let lastSeqCalls = Atomic<Int>(0)

    func setFailing(_ value: Bool) { failing.store(value, ordering: .relaxed) }

    private func check() throws {
        if failing.load(ordering: .relaxed) { throw FlakyStoreDown() }
    }

    func run() async throws { try await inner.run() }

    func append(_ draft: MessageDraft) async throws -> AppendResult {
        try check()
        return try await inner.append(draft)
    }

    func history(room: String, query: HistoryQuery) async throws -> HistoryPage {
        try check()
        return try await inner.history(room: room, query: query)
    }

    func sharedSecret(named name: String) async throws -> [UInt8] {
        try check()
        return try await inner.sharedSecret(named: name)
    }

    func addPushSubscription(_ subscription: PushSubscription) async throws {
        try check()
        try await inner.addPushSubscription(subscription)
    }

    func removePushSubscription(endpoint: String, user: String?) async throws -> Bool {
        try check()
        return try await inner.removePushSubscription(endpoint: endpoint, user: user)
    }

    func pushSubscriptions(user: String) async throws -> [PushSubscription] {
        try check()
        return try await inner.pushSubscriptions(user: user)
    }

    func pushMutes(user: String) async throws -> Set<String> {
        try check()
        return try await inner.pushMutes(user: user)
    }

    func setPushMutes(user: String, rooms: Set<String>) async throws {
        try check()
        try await inner.setPushMutes(user: user, rooms: rooms)
    }

    func sanction(room: String, user: String) async throws -> Sanction? {
        try check()
        return try await inner.sanction(room: room, user: user)
    }

    func lastSeq(room: String) async throws -> Int64 {
        lastSeqCalls.add(1, ordering: .relaxed)
        try check()
        return try await inner.lastSeq(room: room)
    }

    func rooms() async throws -> [(room: String, seq: Int64)] {
        try check()
        return try await inner.rooms()
    }

    func addToInbox(user: String, room: String, readSeq: Int64) async throws {
        try check()
        try await inner.addToInbox(user: user, room: room, readSeq: readSeq)
    }

    func markRead(user: String, room: String, seq: Int64) async throws {
        try check()
        try await inner.markRead(user: user, room: room, seq: seq)
    }

    func inbox(user: String) async throws -> [InboxEntry] {
        try check()
        return try await inner.inbox(user: user)
    }

    func search(terms: [String], before: String?, limit: Int) async throws -> [Message] {
        try check()
        return try await inner.search(terms: terms, before: before, limit: limit)
    }
}

/// Says what a real driver says: where the backend lives. None of it may reach a client.
struct FlakyStoreDown: Error, CustomStringConvertible {
    static let secret = "db.internal.example:5432"
    var description: String { "connection to \(Self.secret) refused (user parley)" }
}

@Suite("Storage failure")
struct StorageFailureTests {
    @Test("when storing fails, every transport answers unavailable and nobody receives the message")
    func noFalseAck() async throws {
        let store = FlakyStore()
        try await withServer(store: store) { server in
            let member = try await TestClient.connect(port: server.port, user: "member")
            try await member.ack("join", ["room": "general"])
            let poster = try await TestClient.connect(port: server.port, user: "poster")
            _ = try await poster.ack("message", ["room": "general", "content": "before"])
            _ = try await member.expect("message")

            store.setFailing(true)
            let refused = try await poster.request("message", ["room": "general", "content": "lost?"])
            #expect(refused["event"].string == "error")
            #expect(refused["data"]["code"].string == "unavailable")
            // The cause is logged; clients get a stable message without the backend's details.
            #expect(refused["data"]["message"].string?.contains(FlakyStoreDown.secret) == false)
            let history = try await poster.request("history", ["room": "general"])
            #expect(history["data"]["code"].string == "unavailable")
            #expect(history["data"]["message"].string?.contains(FlakyStoreDown.secret) == false)
            let post = try await http("POST", server.url("/api/rooms/general/messages"), body: #"{"content": "lost?", "user": "poster"}"#)
            #expect(post.status == 503)
            #expect(post.json["error"]["code"].string == "unavailable")
            let read = try await http("GET", server.url("/api/rooms/general/messages"))
            #expect(read.status == 503)
            #expect(!read.text.contains(FlakyStoreDown.secret))
            try await withChatClient(port: server.grpcPort) { client in
                let status = await grpcStatus {
                    _ = try await client.sendMessage(.with { $0.roomID = "general"; $0.senderID = "poster"; $0.content = "lost?" })
                }
                #expect(status == .unavailable)
                do {
                    _ = try await client.getHistory(.with { $0.roomID = "general" })
                    Issue.record("GetHistory succeeded on a failing store")
                } catch let error as RPCError {
                    #expect(error.code == .unavailable)
                    #expect(!error.message.contains(FlakyStoreDown.secret))
                }
            }
            #expect(try await member.drain(for: .milliseconds(300)).filter { $0["event"].string == "message" }.isEmpty)

            // Back again: posting works and the room continues without a gap.
            store.setFailing(false)
            let after = try await poster.ack("message", ["room": "general", "content": "after"])
            #expect(after["seq"].int == 2)
            let received = try await member.expect("message")
            #expect(received["seq"].int == 2)
            #expect(received["content"].string == "after")
        }
    }
}
