import Hummingbird
import NIOCore
import ParleyCore

/// The HTTP form of a Parley error: its status and `{"error": {"code", "message"}}`, with
/// `Retry-After` when rate limited.
extension ParleyError: HTTPResponseError {
    public var status: HTTPResponse.Status {
        switch code {
        case .badRequest: .badRequest
        case .unauthorized: .unauthorized
        case .forbidden: .forbidden
        case .notFound: .notFound
        case .tooLarge: .contentTooLarge
        case .rateLimited: .tooManyRequests
        case .unavailable: .serviceUnavailable
        default: .internalServerError
        }
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        Response(status: status, headers: headers, body: .init(byteBuffer: WireJSON.errorBody(self)))
    }

    /// The headers of its HTTP answer: JSON, and `Retry-After` when the error says when.
    var headers: HTTPFields {
        var headers: HTTPFields = [.contentType: "application/json; charset=utf-8"]
        if let retryAfterMs {
            headers[.retryAfter] = String((retryAfterMs + 999) / 1000)
        }
        return headers
    }
}

extension Response {
    static func json(_ status: HTTPResponse.Status = .ok, _ body: (inout JSONWriter) -> Void) -> Response {
        var json = JSONWriter()
        body(&json)
        return Response(
            status: status, headers: [.contentType: "application/json; charset=utf-8"],
            body: .init(byteBuffer: json.buffer)
        )
    }
}
