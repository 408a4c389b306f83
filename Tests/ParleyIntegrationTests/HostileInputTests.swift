import Foundation
import GRPCCore
import ParleyGRPC
@testable import ParleyServer
import Testing

/// Inputs an attacker would try first, against the default store (SQLite): each one is
/// answered with its spec'd error or an empty result, and the server keeps serving.
@Suite("Hostile input")
struct HostileInputTests {
    static let top = Int64.max

    @Test("cursors at the top of the 64-bit range answer an empty page on every transport and stop nothing")
    func extremeCursors() async throws {
        try await withServer { server in
            #expect(server.server.configuration.storage == .sqlite)
            let alice = try await TestClient.connect(port: server.port, user: "alice")
            try await alice.ack("join", ["room": "general"])
            try await alice.ack("message", ["room": "general", "content": "one"])

            // HTTP, no token needed in open mode.
            let after = try await http("GET", server.url("/api/rooms/general/messages?after=\(Self.top)"))
            #expect(after.status == 200)
            #expect(after.json["messages"].array?.isEmpty == true)
            let before = try await http("GET", server.url("/api/rooms/general/messages?before=\(Self.top)&after=\(Self.top - 1)"))
            #expect(before.json["messages"].array?.isEmpty == true)
            let all = try await http("GET", server.url("/api/rooms/general/messages?before=\(Self.top)"))
            #expect(all.json["messages"].array?.count == 1)
            let beyond = try await http("GET", server.url("/api/rooms/general/messages?after=9223372036854775808"))
            #expect(beyond.status == 400)
            #expect(beyond.json["error"]["code"].string == "bad_request")

            // WebSocket: history and join with since.
            let page = try await alice.ack("history", ["room": "general", "after": Self.top])
            #expect(page["messages"].array?.isEmpty == true)
            let page2 = try await alice.ack("history", ["room": "general", "before": Self.top, "after": Self.top])
            #expect(page2["messages"].array?.isEmpty == true)
            let bob = try await TestClient.connect(port: server.port, user: "bob")
            let joined = try await bob.ack("join", ["room": "general", "since": Self.top])
            #expect(joined["seq"].int == 1)
            try await bob.ack("read", ["room": "general", "seq": Self.top])

            // gRPC: GetHistory and the Chat stream.
            try await withChatClient(port: server.grpcPort) { client in
                let empty = try await client.getHistory(.with {
                    $0.roomID = "general"
                    $0.afterSeq = Self.top
                })
                #expect(empty.messages.isEmpty)
                let chat = EventStream.chat(client)
                guard case .connect? = try await chat.request(.connect(.with { $0.user = "carol" }), id: "1") else { throw TestFailure("no connect") }
                guard case .history(let streamed)? = try await chat.request(.history(.with {
                    $0.roomID = "general"
                    $0.afterSeq = Self.top
                    $0.beforeSeq = Self.top
                }), id: "2") else { throw TestFailure("no history") }
                #expect(streamed.messages.isEmpty)
                chat.cancel()
            }

            // Still serving: a new message reaches the live member.
            try await alice.ack("message", ["room": "general", "content": "two"])
            #expect(try await bob.expect("message")["content"].string == "two")
        }
    }

    @Test("every error of the HTTP API is the JSON error object, unknown routes included")
    func unknownRoutes() async throws {
        try await withServer { server in
            for (method, path) in [("GET", "/api/nope"), ("GET", "/api/rooms"), ("POST", "/api/rooms/r/nope"), ("DELETE", "/api/rooms/r/messages"), ("GET", "/api")] {
                let result = try await http(method, server.url(path), body: method == "POST" ? "{}" : nil)
                if path == "/api/rooms" { #expect(result.status == 200); continue }
                #expect(result.status == 404, "\(method) \(path)")
                #expect(result.headers["content-type"]?.hasPrefix("application/json") == true, "\(method) \(path)")
                #expect(result.json["error"]["code"].string == "not_found", "\(method) \(path): \(result.text)")
                #expect(result.json["error"]["message"].string?.isEmpty == false)
            }
            // The web client's files keep their plain answers.
            #expect(try await rawHTTP(port: server.port, .GET, "/index.html").status == 200)
        }
    }

    @Test("in open mode SSE needs no user: an anonymous watcher gets the room's events and is in no presence")
    func anonymousSSE() async throws {
        try await withServer { server in
            let watcher = try await SSEClient.open(port: server.port, path: "/rooms/general/events?since=0")
            #expect(watcher.status == 200)
            let alice = try await TestClient.connect(port: server.port, user: "alice")
            let joined = try await alice.ack("join", ["room": "general"])
            #expect(joined["users"].array?.compactMap { $0["user"].string } == ["alice"])
            try await alice.ack("message", ["room": "general", "content": "hello watchers"])
            #expect(try await watcher.expect("message").json["content"].string == "hello watchers")
            let presence = try await http("GET", server.url("/api/rooms/general/presence"))
            #expect(presence.json["users"].array?.compactMap { $0["user"].string } == ["alice"])
            watcher.close()
            // A named user is still a present member.
            let bob = try await SSEClient.open(port: server.port, path: "/rooms/general/events?user=bob")
            _ = try await alice.expect("join") { $0["user"].string == "bob" }
            bob.close()
        }
    }

    @Test("unauthenticated probes (/readyz, /metrics, gRPC health) cost the store about one query a second, however many arrive")
    func probesAreCached() async throws {
        let store = FlakyStore()
        try await withServer(store: store) { server in
            let before = store.lastSeqCalls.load(ordering: .relaxed)
            let started = ContinuousClock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<300 {
                    group.addTask {
                        let path = index % 2 == 0 ? "/readyz" : "/metrics"
                        let status = try await rawHTTP(port: server.port, .GET, path).status
                        #expect(status == 200)
                    }
                    if index % 20 == 19 { try await group.waitForAll() }
                }
                try await group.waitForAll()
            }
            let seconds = Int((ContinuousClock.now - started).components.seconds)
            let queries = store.lastSeqCalls.load(ordering: .relaxed) - before
            #expect(queries >= 1)
            #expect(queries <= seconds + 2, "\(queries) store queries for 300 probes in \(seconds) s")
        }
    }
}
