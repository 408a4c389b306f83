import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import ParleyCore

/// Uploads and downloads of attachments (docs/protocol.md, "Attachments").
///
/// A download can never run script in Parley's origin: the type is the sniffed one (an HTML
/// page uploaded as `cat.png` is `text/plain`), `nosniff` stops the browser from guessing
/// another, anything but an image or audio is `Content-Disposition: attachment`, and
/// `Content-Security-Policy: default-src 'none'; sandbox` disarms whatever is opened anyway.
struct AttachmentRoutes {
    let engine: Engine
    let auth: RequestAuth

    func register(on router: Router<ParleyRequestContext>) {
        let api = router.group("api")
        api.post("rooms/:room/attachments") { request, context -> Response in
            let query = request.uri.queryParameters
            let user = query["user"].map(String.init)
            let identity = try await auth.identity(request, claimedUser: user)
            let declared = request.headers[.contentLength].flatMap { Int64($0) }
            let attachment = try await engine.upload(
                identity, as: user, room: try context.parameters.require("room"), name: query["name"].map(String.init) ?? "file",
                duration: try QueryValues.int64(query["duration"], name: "duration").map { Int(clamping: $0) },
                declaredLength: declared, body: request.body
            )
            return Response.json(.created) { WireJSON.attachment(attachment, into: &$0) }
        }
        api.get("attachments/:id") { request, context -> Response in
            let attachment = try await engine.attachment(try await auth.reader(request), id: try context.parameters.require("id"))
            return try download(attachment, request: request)
        }
        api.head("attachments/:id") { request, context -> Response in
            let attachment = try await engine.attachment(try await auth.reader(request), id: try context.parameters.require("id"))
            var response = try download(attachment, request: request)
            response.body = ResponseBody()
            return response
        }
    }

    private func download(_ attachment: Attachment, request: Request) throws -> Response {
        guard let store = engine.attachments else { throw ParleyError(.notFound, "attachments are turned off") }
        let etag = "\"\(attachment.digest)\""
        var headers = HTTPFields()
        headers[.contentType] = attachment.type == "text/plain" ? "text/plain; charset=utf-8" : attachment.type
        headers[.eTag] = etag
        headers[.acceptRanges] = "bytes"
        headers[.cacheControl] = "private, max-age=31536000, immutable"
        headers[.init("X-Content-Type-Options")!] = "nosniff"
        headers[.contentSecurityPolicy] = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
        headers[.init("Cross-Origin-Resource-Policy")!] = "same-origin"
        headers[.contentDisposition] = Self.disposition(attachment)
        if request.headers[.ifNoneMatch].map({ $0.split(separator: ",").contains { $0.trimmingCharacters(in: .whitespaces) == etag } }) == true {
            return Response(status: .notModified, headers: headers)
        }
        let size = attachment.size
        var range: Range<Int64> = 0..<size
        var status = HTTPResponse.Status.ok
        // One range is served (a player seeking); several, or a stale If-Range, get the whole file.
        if let header = request.headers[.range], !header.contains(","), request.headers[.ifRange].map({ $0 == etag }) ?? true {
            guard let asked = Self.byteRange(header, size: size) else {
                headers[.contentRange] = "bytes */\(size)"
                return Response(status: .rangeNotSatisfiable, headers: headers)
            }
            range = asked
            status = .partialContent
            headers[.contentRange] = "bytes \(asked.lowerBound)-\(asked.upperBound - 1)/\(size)"
        }
        headers[.contentLength] = String(range.count)
        let chunks = store.read(attachment, range: range)
        return Response(status: status, headers: headers, body: ResponseBody(asyncSequence: chunks))
    }

    /// `inline` for what the page shows itself, else `attachment`; the name in both the ASCII
    /// and the RFC 5987 forms.
    static func disposition(_ attachment: Attachment) -> String {
        let ascii = String(attachment.name.unicodeScalars.map { $0.isASCII && $0.value >= 0x20 && $0 != "\"" && $0 != "\\" && $0 != ";" ? Character($0) : "_" })
        let encoded = attachment.name.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(.init(charactersIn: "-._~"))) ?? "file"
        return "\(attachment.isInline ? "inline" : "attachment"); filename=\"\(ascii)\"; filename*=UTF-8''\(encoded)"
    }

    /// The range `bytes=a-b`, `bytes=a-` or `bytes=-n` asks for; nil when it is malformed or
    /// outside the file (416).
    static func byteRange(_ header: String, size: Int64) -> Range<Int64>? {
        guard header.hasPrefix("bytes="), size > 0 else { return nil }
        let spec = header.dropFirst(6)
        guard !spec.contains(","), let dash = spec.firstIndex(of: "-") else { return nil }
        let first = spec[..<dash].trimmingCharacters(in: .whitespaces)
        let last = spec[spec.index(after: dash)...].trimmingCharacters(in: .whitespaces)
        if first.isEmpty {
            guard let suffix = Int64(last), suffix > 0 else { return nil }
            return max(0, size - suffix)..<size
        }
        guard let start = Int64(first), start >= 0, start < size else { return nil }
        if last.isEmpty { return start..<size }
        guard let end = Int64(last), end >= start else { return nil }
        return start..<(min(end, size - 1) + 1)
    }
}
