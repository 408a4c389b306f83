import Hummingbird
import ParleyCore

/// What keeps browsers safe around Parley:
/// - a request that changes state (`POST` and other unsafe methods) from a page of another
///   site is refused `403 forbidden`, unless that site is allowed by CORS
///   (`PARLEY_CORS_ORIGINS`) or by `PARLEY_ALLOWED_ORIGINS`: an HTML form or a `no-cors`
///   fetch can send `text/plain` cross-site without a preflight. Browsers always send `Origin`
///   on such requests; clients that are not browsers send none and are not affected;
/// - every answer says `X-Content-Type-Options: nosniff`, and the web client's pages carry a
///   Content-Security-Policy that allows only Parley's own scripts, styles and connections,
///   and no framing (`frame-ancestors 'none'`).
struct BrowserSafetyMiddleware<Context: RequestContext>: RouterMiddleware {
    let cors: OriginPolicy
    let origins: OriginPolicy

    static var contentSecurityPolicy: String {
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
            + "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if ![.get, .head, .options].contains(request.method), let origin = request.headers[.origin], OriginPolicy.isBrowserOrigin(origin) {
            let host = request.head.authority
            // The CORS list (empty: none) also admits the server's own origin.
            let listed = origins.allowed?.contains(OriginPolicy.normalize(origin)) ?? false
            guard cors.allows(origin, host: host) || listed else {
                throw ParleyError(.forbidden, "a page of \(origin) may not post here; list it in PARLEY_CORS_ORIGINS")
            }
        }
        var response: Response
        do {
            response = try await next(request, context)
        } catch let error as any HTTPResponseError {
            response = try error.response(from: request, context: context)
        }
        // A WebSocket upgrade's answer goes to the upgrader, which must see only its own headers.
        guard response.status != .ok || request.headers[.upgrade] == nil else { return response }
        response.headers[.xContentTypeOptions] = "nosniff"
        if !APIErrorMiddleware<Context>.isAPI(request.uri.path) {
            response.headers[.contentSecurityPolicy] = Self.contentSecurityPolicy
            response.headers[.init("X-Frame-Options")!] = "DENY"
            response.headers[.init("Referrer-Policy")!] = "no-referrer"
        }
        return response
    }
}
