import AsyncHTTPClient
import NIOCore
import ParleyCore

/// Sends pushes with the shared HTTP client (TLS with the system's roots; connections to a
/// push service are pooled and reused). A push service that does not answer within `timeout`
/// counts as no answer (retried).
struct HTTPPushTransport: PushTransport {
    var timeout: Duration = .seconds(15)

    func send(_ request: PushRequest) async throws -> PushResponse {
        var outbound = HTTPClientRequest(url: request.endpoint)
        outbound.method = .POST
        for (name, value) in request.headers { outbound.headers.add(name: name, value: value) }
        outbound.body = .bytes(ByteBuffer(bytes: request.body))
        let answer = try await HTTPClient.shared.execute(outbound, timeout: .nanoseconds(Int64(timeout.nanoseconds)))
        // The body is a short explanation at most; read (and bound) it so the connection is reused.
        _ = try? await answer.body.collect(upTo: 64 * 1024)
        // Retry-After in seconds (push services do not send the HTTP-date form).
        let retryAfter = answer.headers.first(name: "Retry-After").flatMap { Int($0) }.map { Duration.seconds(min(max($0, 0), 3600)) }
        return PushResponse(status: Int(answer.status.code), retryAfter: retryAfter)
    }
}
