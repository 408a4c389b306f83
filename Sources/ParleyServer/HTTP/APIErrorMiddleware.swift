import Hummingbird
import ParleyCore

/// Every error of the HTTP API and SSE is the JSON error object, also those raised before a
/// route runs: an unknown route under `/api/` (404 `not_found`), a method a route does not
/// take, a body the server refuses. Other paths (the web client's files) keep plain answers.
struct APIErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as HTTPError where Self.isAPI(request.uri.path) {
            throw Self.parleyError(error, request: request)
        }
    }

    static func isAPI(_ path: String) -> Bool {
        path == "/api" || path.hasPrefix("/api/") || path.hasPrefix("/rooms/")
    }

    static func parleyError(_ error: HTTPError, request: Request) -> ParleyError {
        let code: ParleyError.Code =
            switch error.status.code {
            case 401: .unauthorized
            case 403: .forbidden
            case 404, 405: .notFound
            case 413: .tooLarge
            case 429: .rateLimited
            case 503: .unavailable
            case 400..<500: .badRequest
            default: .internal
            }
        let message =
            switch error.status.code {
            case 404, 405: "no route \(request.method) \(request.uri.path); see docs/protocol.md for the HTTP API"
            default: error.body ?? error.status.reasonPhrase
            }
        return ParleyError(code, message)
    }
}
