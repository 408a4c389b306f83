import HTTPTypes
import Hummingbird

/// A request that asks for `Connection: close` gets it on its answer too (RFC 9112 9.6): the
/// server closes the connection after it either way, and a proxy that keeps connections to
/// Parley alive (nginx with `keepalive`) reads the header to know not to send the next request
/// on that one. Without it nginx sent requests into connections Parley had just closed and
/// marked the instance failed.
struct ConnectionCloseMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard request.headers[values: .connection].contains(where: { $0.lowercased().contains("close") }) else {
            return try await next(request, context)
        }
        var response: Response
        do {
            response = try await next(request, context)
        } catch let error as any HTTPResponseError {
            response = try error.response(from: request, context: context)
        }
        response.headers[.connection] = "close"
        return response
    }
}
