import Foundation
import ParleyCore
@testable import ParleyServer
import Testing

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A raw HTTP call: status, headers (lowercased names) and the body's bytes.
func httpData(_ method: String, _ url: String, body: Data? = nil, headers: [String: String] = [:]) async throws -> (status: Int, headers: [String: String], body: Data) {
    var request = URLRequest(url: URL(string: url)!)
    request.httpMethod = method
    request.httpBody = body
    for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
    let (data, response) = try await URLSession.shared.data(for: request)
    let http = response as! HTTPURLResponse
    var fields: [String: String] = [:]
    for (name, value) in http.allHeaderFields { fields["\(name)".lowercased()] = "\(value)" }
    return (http.statusCode, fields, data)
}

/// A PNG header (signature and IHDR) of the given size, then filler: enough for sniffing.
func pngBytes(width: UInt32, height: UInt32, filler: Int = 1000) -> Data {
    var bytes: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13] + Array("IHDR".utf8)
    for value in [width, height] { bytes += [24, 16, 8, 0].map { UInt8(truncatingIfNeeded: value >> $0) } }
    bytes += [8, 6, 0, 0, 0] + Array(repeating: 0x42, count: filler)
    return Data(bytes)
}

/// Uploads, downloads and their safety, on the default SQLite store with files on disk.
@Suite("Attachments")
struct AttachmentTests {
    @Test("upload, message, download with Range and ETag; the type is sniffed, an HTML file named .png is a download")
    func uploadAndDownload() async throws {
        try await withServer { server in
            let png = pngBytes(width: 640, height: 480, filler: 200_000)
            // The name's path is dropped: it is a name, never a place.
            let stored = try await httpData("POST", server.url("/api/rooms/r/attachments?user=alice&name=..%2Fholiday.png"), body: png)
            #expect(stored.status == 201)
            let attachment = try JSON.parse(String(decoding: stored.body, as: UTF8.self))
            #expect(attachment["type"].string == "image/png" && attachment["width"].int == 640 && attachment["height"].int == 480)
            #expect(attachment["size"].int == png.count && attachment["name"].string == "holiday.png")
            let id = try #require(attachment["id"].string)

            // Only its uploader may see it before it is in a message, in JWT mode; here in open
            // mode a reader may; alice puts it in a message with no text.
            let alice = try await TestClient.connect(port: server.port, user: "alice")
            try await alice.ack("join", ["room": "r"])
            let message = try await alice.ack("message", ["room": "r", "attachments": [id]])
            #expect(message["content"].string == "" && message["attachments"][0]["id"].string == id)
            #expect(message["attachments"][0]["url"].string == "/api/attachments/\(id)")
            let again = try await alice.request("message", ["room": "r", "content": "twice", "attachments": [id]])
            #expect(again["data"]["code"].string == "bad_request")

            let whole = try await httpData("GET", server.url("/api/attachments/\(id)"))
            #expect(whole.status == 200 && whole.body == png)
            #expect(whole.headers["content-type"] == "image/png" && whole.headers["x-content-type-options"] == "nosniff")
            #expect(whole.headers["content-disposition"]?.hasPrefix("inline;") == true)
            #expect(whole.headers["content-security-policy"]?.contains("sandbox") == true)
            let etag = try #require(whole.headers["etag"])
            let cached = try await httpData("GET", server.url("/api/attachments/\(id)"), headers: ["If-None-Match": etag])
            #expect(cached.status == 304 && cached.body.isEmpty)
            let part = try await httpData("GET", server.url("/api/attachments/\(id)"), headers: ["Range": "bytes=100000-100099"])
            #expect(part.status == 206 && part.body == png[100_000..<100_100])
            #expect(part.headers["content-range"] == "bytes 100000-100099/\(png.count)")
            let tail = try await httpData("GET", server.url("/api/attachments/\(id)"), headers: ["Range": "bytes=-10"])
            #expect(tail.status == 206 && tail.body == png.suffix(10))
            let outside = try await httpData("GET", server.url("/api/attachments/\(id)"), headers: ["Range": "bytes=\(png.count)-"])
            #expect(outside.status == 416 && outside.headers["content-range"] == "bytes */\(png.count)")

            // A page that calls itself a PNG is text, and only ever downloaded.
            let page = Data("<html><script>alert(document.cookie)</script></html>".utf8)
            let lie = try await httpData("POST", server.url("/api/rooms/r/attachments?user=alice&name=cat.png"), body: page)
            let lieID = try #require(try JSON.parse(String(decoding: lie.body, as: UTF8.self))["id"].string)
            let served = try await httpData("GET", server.url("/api/attachments/\(lieID)"))
            #expect(served.headers["content-type"] == "text/plain; charset=utf-8")
            #expect(served.headers["content-disposition"]?.hasPrefix("attachment;") == true && served.headers["x-content-type-options"] == "nosniff")

            // Deleting the message deletes its file.
            try await alice.ack("delete", ["room": "r", "id": try #require(message["id"].string)])
            #expect(try await httpData("GET", server.url("/api/attachments/\(id)")).status == 404)
        }
    }

    @Test("too large: refused from Content-Length before the body, and cut off when there is none; an upload cut off leaves nothing")
    func limits() async throws {
        try await withServer({ $0.limits.maxAttachmentBytes = 100_000 }) { server in
            // The head alone: the answer comes although not a byte of the body was sent.
            let socket = try await RawSocket.connect(port: server.port)
            try await socket.send("POST /api/rooms/r/attachments?user=alice&name=big.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 30000000\r\n\r\n")
            let answer = await socket.read()
            #expect(answer?.hasPrefix("HTTP/1.1 413") == true, "\(answer ?? "nothing")")
            await socket.close()
            // Chunked, no length: cut off at the limit.
            let chunked = try await RawSocket.connect(port: server.port)
            try await chunked.send("POST /api/rooms/r/attachments?user=alice&name=big.bin HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            let chunk = String(repeating: "x", count: 60_000)
            try await chunked.send(String(chunk.utf8.count, radix: 16) + "\r\n" + chunk + "\r\n")
            try await chunked.send(String(chunk.utf8.count, radix: 16) + "\r\n" + chunk + "\r\n")
            let cut = await chunked.read()
            #expect(cut?.hasPrefix("HTTP/1.1 413") == true, "\(cut ?? "nothing")")
            await chunked.close()
            // A client that stops half way: nothing is stored, no file is left.
            let half = try await RawSocket.connect(port: server.port)
            try await half.send("POST /api/rooms/r/attachments?user=alice&name=half.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 90000\r\n\r\n")
            try await half.send(String(repeating: "y", count: 40_000))
            await half.close()
            let directory = server.server.configuration.dataDirectory + "/attachments"
            var leftovers: [String] = ["?"]
            for _ in 0..<100 {
                leftovers = (FileManager.default.subpaths(atPath: directory) ?? []).filter { !$0.hasPrefix("index.sqlite") && $0 != "tmp" }
                if leftovers.isEmpty { break }
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(leftovers.isEmpty, "\(leftovers)")
            #expect(try await server.engine.attachments?.bytesUploaded(by: "alice", since: Timestamp(milliseconds: 0)) == 0)
        }
    }

    @Test("the daily quota answers 429 with Retry-After; a stranger to the room gets 403 for a file, even with its id")
    func quotaAndAccess() async throws {
        try await withJWTServer({ $0.limits.attachmentQuotaPerDay = 3000 }) { server in
            let alice = try await Tokens.hs256(TestClaims(sub: "alice"))
            let bob = try await Tokens.hs256(TestClaims(sub: "bob"))
            let carol = try await Tokens.hs256(TestClaims(sub: "carol", rooms: ["lobby"]))
            let file = pngBytes(width: 1, height: 1, filler: 2000)
            let first = try await httpData("POST", server.url("/api/rooms/dm:alice:bob/attachments?name=a.png"), body: file, headers: bearer(alice))
            #expect(first.status == 201)
            let id = try #require(try JSON.parse(String(decoding: first.body, as: UTF8.self))["id"].string)
            let over = try await httpData("POST", server.url("/api/rooms/dm:alice:bob/attachments?name=b.png"), body: file, headers: bearer(alice))
            #expect(over.status == 429 && over.headers["retry-after"] != nil)
            // Not in a message yet: bob does not see it; carol never does.
            #expect(try await httpData("GET", server.url("/api/attachments/\(id)"), headers: bearer(bob)).status == 404)
            _ = try await http("POST", server.url("/api/rooms/dm:alice:bob/messages"), body: "{\"content\":\"look\",\"attachments\":[\"\(id)\"]}", headers: bearer(alice))
            #expect(try await httpData("GET", server.url("/api/attachments/\(id)"), headers: bearer(bob)).status == 200)
            #expect(try await httpData("GET", server.url("/api/attachments/\(id)?token=\(bob)")).status == 200)
            #expect(try await httpData("GET", server.url("/api/attachments/\(id)"), headers: bearer(carol)).status == 403)
            #expect(try await httpData("GET", server.url("/api/attachments/\(id)")).status == 401)
        }
    }
}
