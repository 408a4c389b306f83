import Foundation
import NIOCore
@testable import ParleyServer
import Testing

/// Sockets that never become useful are bounded in number and in time: no request that does
/// not become a WebSocket holds a connection slot, and idle or half-sent connections close.
@Suite("Connection hygiene")
struct ConnectionHygieneTests {
    static let head = "GET /ws?user=mallory HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"

    @Test("upgrade requests that cannot become a WebSocket hold no slot, on fresh or keep-alive sockets")
    func noSlotWithoutUpgrade() async throws {
        try await withServer({ $0.limits.maxConnections = 2 }) { server in
            var sockets: [RawSocket] = []
            let variants = [
                Self.head + "\r\n",  // no Sec-WebSocket-Key
                Self.head + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 12\r\n\r\n",  // wrong version
                "GET /ws?user=mallory HTTP/1.1\r\nHost: x\r\n\r\n",  // no upgrade at all: 426
                "GET /ws?user=mallory HTTP/1.1\r\nHost: x\r\n\r\nGET /ws?user=mallory HTTP/1.1\r\nHost: x\r\n\r\n",  // keep-alive, twice
            ]
            for variant in variants {
                for _ in 0..<5 {
                    let socket = try await RawSocket.connect(port: server.port)
                    try await socket.send(variant)
                    #expect(await socket.read() != nil, "no answer to \(variant.debugDescription)")
                    sockets.append(socket)
                }
            }
            // Twenty sockets are open and answered; none of them is counted.
            #expect(server.engine.connections.count == 0)
            let first = try await TestClient.connect(port: server.port, user: "alice")
            let second = try await TestClient.connect(port: server.port, user: "bob")
            try await first.ack("join", ["room": "r"])
            try await second.ack("join", ["room": "r"])
            #expect(server.engine.connections.count == 2)
            for socket in sockets { await socket.close() }
        }
    }

    @Test("a connection that sends nothing, or half a request head, is closed after the handshake timeout")
    func headDeadline() async throws {
        try await withServer({ $0.handshakeTimeout = .seconds(1) }) { server in
            let silent = try await RawSocket.connect(port: server.port)
            let slow = try await RawSocket.connect(port: server.port)
            try await slow.send("GET /api/rooms HTTP/1.1\r\nHost: x\r\n")
            #expect(await silent.closedByServer(within: .seconds(15)))
            #expect(await slow.closedByServer(within: .seconds(15)))
            // A complete request on time is answered.
            #expect(try await http("GET", server.url("/healthz")).status == 200)
        }
    }

    @Test("a WebSocket that answers no ping is closed within two ping intervals; one that answers stays")
    func deadPeer() async throws {
        // Long enough that a loaded machine's real client answers in time, short enough that
        // the silent one is closed within the bounded wait below.
        try await withServer({ $0.pingInterval = .seconds(3) }) { server in
            // A raw socket: upgraded, then silent, answering nothing (a peer that vanished).
            let silent = try await RawSocket.connect(port: server.port)
            try await silent.send(Self.head + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            #expect(await silent.read()?.hasPrefix("HTTP/1.1 101") == true)
            // A real client answers the pings (its library does) and is kept.
            let alive = try await TestClient.connect(port: server.port, user: "alice")
            #expect(await silent.closedByServer(within: .seconds(15)))
            try await alive.ack("join", ["room": "r"])
        }
    }

    @Test("an upgrade to anything but a WebSocket (curl --http2 asks for h2c) is served over HTTP/1.1")
    func otherUpgrade() async throws {
        try await withServer { server in
            let socket = try await RawSocket.connect(port: server.port)
            try await socket.send(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
            )
            let answer = await socket.read()
            #expect(answer?.hasPrefix("HTTP/1.1 200") == true, "\(answer ?? "no answer")")
            await socket.close()
            // With a body too: it is still there once the header is gone.
            let post = try await RawSocket.connect(port: server.port)
            let body = #"{"content":"hi","user":"bob"}"#
            try await post.send(
                "POST /api/rooms/r/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n" + body
            )
            #expect(await post.read()?.hasPrefix("HTTP/1.1 201") == true)
            await post.close()
        }
    }

    @Test("a keep-alive connection idle between requests is closed after the idle timeout")
    func keepAliveIdle() async throws {
        try await withServer({ $0.idleTimeout = .seconds(1) }) { server in
            let socket = try await RawSocket.connect(port: server.port)
            try await socket.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(await socket.read()?.hasPrefix("HTTP/1.1 200") == true)
            #expect(await socket.closedByServer(within: .seconds(15)))
        }
    }

    @Test("a request that asks for Connection: close is answered with it, then the connection closes (as nginx's keepalive needs)")
    func connectionClose() async throws {
        try await withServer { server in
            for path in ["/healthz", "/rooms/r/messages", "/no/such/route", "/socket.io/?EIO=4&transport=polling&sid=x.y"] {
                let socket = try await RawSocket.connect(port: server.port)
                try await socket.send("GET \(path) HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                var answer = ""
                while let chunk = await socket.read(timeout: .seconds(10)), !chunk.isEmpty { answer += chunk }
                let head = answer.components(separatedBy: "\r\n\r\n")[0].lowercased()
                #expect(head.hasPrefix("http/1.1 "), "\(path): \(answer)")
                #expect(head.contains("\r\nconnection: close"), "\(path): \(head)")
                #expect(await socket.closedByServer(within: .seconds(5)), "\(path)")
            }
            // Without it, the connection stays open for the next request and says nothing of closing.
            let socket = try await RawSocket.connect(port: server.port)
            try await socket.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            let head = await socket.read()?.lowercased() ?? ""
            #expect(head.hasPrefix("http/1.1 200") && !head.contains("connection: close"))
            try await socket.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(await socket.read()?.hasPrefix("HTTP/1.1 200") == true)
            await socket.close()
        }
    }

    @Test("a gRPC connection with no call open is closed after the idle timeout")
    func grpcIdle() async throws {
        try await withServer({ $0.idleTimeout = .seconds(1) }) { server in
            let socket = try await RawSocket.connect(port: server.grpcPort)
            // The HTTP/2 client preface and an empty SETTINGS frame: a connection, no stream.
            try await socket.send(bytes: Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + [0, 0, 0, 4, 0, 0, 0, 0, 0])
            // Answer like a client: acknowledge SETTINGS and PINGs, until the server hangs up.
            var closed = false
            var buffer: [UInt8] = []
            for _ in 0..<20 {
                guard let chunk = await socket.readBytes(timeout: .seconds(15)) else { break }
                if chunk.isEmpty { closed = true; break }
                buffer += chunk
                while buffer.count >= 9 {
                    let length = Int(buffer[0]) << 16 | Int(buffer[1]) << 8 | Int(buffer[2])
                    guard buffer.count >= 9 + length else { break }
                    let (type, flags) = (buffer[3], buffer[4])
                    if type == 4, flags & 1 == 0 { try? await socket.send(bytes: [0, 0, 0, 4, 1, 0, 0, 0, 0]) }
                    if type == 6, flags & 1 == 0 { try? await socket.send(bytes: [0, 0, 8, 6, 1, 0, 0, 0, 0] + buffer[9..<17]) }
                    buffer.removeFirst(9 + length)
                }
            }
            if !closed { closed = await socket.closedByServer(within: .seconds(15)) }
            #expect(closed)
            await socket.close()
        }
    }
}
