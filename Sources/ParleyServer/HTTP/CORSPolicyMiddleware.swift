import Hummingbird
import ParleyCore

/// CORS for the HTTP API and SSE: answers preflight `OPTIONS` requests and adds
/// `Access-Control-Allow-Origin` to every answer (errors included, so a page can read the
/// error JSON) for the configured origins. With no origin configured it adds nothing and
/// browsers keep other sites' pages out.
struct CORSPolicyMiddleware<Context: RequestContext>: RouterMiddleware {
    let origins: OriginPolicy
    let enabled: Bool

    init(_ origins: [String]) {
        self.origins = OriginPolicy(origins)
        self.enabled = !origins.isEmpty
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard enabled, let origin = request.headers[.origin], origins.allows(origin) else {
            return try await next(request, context)
        }
        let allowOrigin = origins.allowed == nil ? "*" : origin
        if request.method == .options, request.headers[.accessControlRequestMethod] != nil {
            return Response(status: .noContent, headers: [
                .accessControlAllowOrigin: allowOrigin,
                .accessControlAllowMethods: "GET, POST, PATCH, DELETE, OPTIONS",
                .accessControlAllowHeaders: "Authorization, Content-Type, Last-Event-ID",
                .accessControlMaxAge: "600",
                .vary: "Origin",
            ])
        }
        var response: Response
        do {
            response = try await next(request, context)
        } catch let error as any HTTPResponseError {
            response = try error.response(from: request, context: context)
        }
        response.headers[.accessControlAllowOrigin] = allowOrigin
        response.headers[.accessControlExposeHeaders] = "Retry-After"
        response.headers[.vary] = "Origin"
        return response
    }
}
