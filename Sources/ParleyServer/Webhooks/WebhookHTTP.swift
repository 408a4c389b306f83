import AsyncHTTPClient
import Foundation
import Hummingbird
import NIOCore
import ParleyCore

/// Webhook and publish hook requests, with the shared HTTP client (connections to a backend
/// are pooled and reused).
struct HTTPWebhookTransport: WebhookTransport {
    func send(_ request: WebhookRequest) async throws -> WebhookResponse {
        var outbound = HTTPClientRequest(url: request.url)
        outbound.method = .POST
        for (name, value) in request.headers { outbound.headers.add(name: name, value: value) }
        outbound.body = .bytes(ByteBuffer(bytes: request.body))
        let answer = try await HTTPClient.shared.execute(outbound, timeout: .nanoseconds(Int64(request.timeout.nanoseconds)))
        // Read (and bound) the answer so that the connection is reused; the publish hook's
        // verdict is in it.
        let body = (try? await answer.body.collect(upTo: 64 * 1024)).map { Array($0.readableBytesView) } ?? []
        return WebhookResponse(status: Int(answer.status.code), body: body)
    }
}

/// The JSON bodies of webhooks (docs/protocol.md, "Webhooks"):
/// `{"id","type","room","user","timestamp","data"}`; `data` is the stored row as a `message`
/// event carries it (messages, edits, deletions, reactions, moderation), `{"seq"}` for a
/// read, absent for a join or a leave.
enum WebhookJSON {
    static func body(_ event: WebhookEvent, _ message: Message?) -> [UInt8] {
        var json = JSONWriter(capacity: 512)
        json.object { json in
            json.key("id"); json.string(String(event.id))
            json.key("type"); json.string(event.kind.rawValue)
            json.key("room"); json.string(event.room)
            json.key("user"); json.string(event.user)
            json.key("timestamp"); json.string(event.timestamp.rfc3339)
            if event.kind.isStored {
                if let message {
                    json.key("data"); WireJSON.message(message, into: &json)
                } else {
                    // The row is gone (its room's history was removed): the event still says so.
                    json.key("data"); json.null()
                }
            } else if event.kind == .read, let seq = event.seq {
                json.key("data"); json.object { json in json.key("seq"); json.number(seq) }
            }
        }
        return Array(json.buffer.readableBytesView)
    }

    /// The publish hook's question: the message as it would be stored.
    static func publishBody(_ draft: MessageDraft, attachments: [String]) -> [UInt8] {
        var json = JSONWriter(capacity: 512)
        json.object { json in
            json.key("type"); json.string("publish")
            json.key("room"); json.string(draft.room)
            json.key("user"); json.string(draft.user)
            json.key("content"); json.string(draft.content)
            json.key("timestamp"); json.string(draft.timestamp.rfc3339)
            if let clientId = draft.clientId {
                json.key("clientId"); json.string(clientId)
            }
            if let replyTo = draft.replyTo {
                json.key("replyTo"); json.string(replyTo)
            }
            if !attachments.isEmpty {
                json.key("attachments"); json.array(attachments) { json, id in json.string(id) }
            }
        }
        return Array(json.buffer.readableBytesView)
    }
}

/// The synchronous publish hook: before a user's message is stored, the backend is asked
/// (a signed POST, like a webhook). A 2xx answer lets it through unless its JSON says
/// `"allow": false`; a 4xx refuses it (`forbidden`, with the answer's `reason` when it has one);
/// no answer within `timeout`, or a 5xx, lets it through (`failOpen`) or refuses it as
/// `unavailable` (fail closed, the default).
struct HTTPPublishGate: PublishGate {
    let configuration: PublishHookConfiguration
    let transport: any WebhookTransport
    let clock: any ParleyClock
    let metrics: ParleyMetrics

    private struct Verdict: Decodable {
        var allow: Bool?
        var reason: String?
    }

    func check(_ draft: MessageDraft, attachments: [String]) async throws(ParleyError) {
        let body = WebhookJSON.publishBody(draft, attachments: attachments)
        let request = WebhookRequest(
            url: configuration.url,
            headers: [
                ("Content-Type", "application/json"),
                ("User-Agent", "Parley-Webhooks"),
                ("Parley-Event-Type", "publish"),
                (WebhookSignature.header, WebhookSignature.sign(body, secret: configuration.secret, at: clock.now)),
            ],
            body: body, timeout: configuration.timeout
        )
        let started = clock.instant
        let response: WebhookResponse
        do {
            response = try await transport.send(request)
        } catch {
            try hookFailed("no answer")
            return
        }
        metrics.webhookAnswered(after: clock.instant - started)
        let verdict = try? JSONDecoder().decode(Verdict.self, from: Data(response.body))
        switch response.status {
        case 200..<300 where verdict?.allow != false:
            metrics.webhook("allowed")
        case 200..<300, 400..<500:
            metrics.webhook("rejected")
            let reason = verdict?.reason.map { String($0.prefix(200)) } ?? "the message was refused"
            throw ParleyError(.forbidden, reason)
        default:
            try hookFailed("HTTP \(response.status)")
        }
    }

    private func hookFailed(_ why: String) throws(ParleyError) {
        metrics.webhook("hook_failed")
        if !configuration.failOpen {
            throw ParleyError.unavailable("the message could not be checked (\(why)); retry later")
        }
    }
}

/// Dead letters, for a backend (an API key, or anyone in open mode): `GET /api/webhooks/dead`
/// lists them with why they failed; `POST /api/webhooks/dead/{id}/retry` sends one again.
struct WebhookRoutes {
    let outbox: any WebhookOutbox
    let dispatcher: WebhookDispatcher
    let auth: RequestAuth

    func register(on router: Router<ParleyRequestContext>) {
        let webhooks = router.group("api/webhooks")
        webhooks.get("dead") { request, _ -> Response in
            try await backend(request)
            let limit = min(max(request.uri.queryParameters["limit"].flatMap { Int($0) } ?? 100, 1), 1000)
            let dead = try await outbox.deadWebhooks(limit: limit)
            return Response.json { json in
                json.object { json in
                    json.key("dead"); json.array(dead) { json, event in
                        json.object { json in
                            json.key("id"); json.string(String(event.id))
                            json.key("url"); json.number(event.target + 1)
                            json.key("type"); json.string(event.kind.rawValue)
                            json.key("room"); json.string(event.room)
                            json.key("user"); json.string(event.user)
                            json.key("timestamp"); json.string(event.timestamp.rfc3339)
                            json.key("attempts"); json.number(event.attempts)
                            json.key("error"); json.string(event.lastError ?? "")
                        }
                    }
                }
            }
        }
        webhooks.post("dead/{id}/retry") { request, context -> Response in
            try await backend(request)
            guard let id = context.parameters.get("id").flatMap({ Int64($0) }) else { throw ParleyError.badRequest("id: an event id") }
            guard try await outbox.reviveWebhook(id: id) else { throw ParleyError(.notFound, "no dead letter \(id)") }
            dispatcher.poke()
            return Response.json { json in json.object { json in json.key("retrying"); json.string(String(id)) } }
        }
    }

    private func backend(_ request: Request) async throws {
        let identity = try await auth.reader(request)
        guard identity.isBackend else { throw ParleyError(.forbidden, "dead letters are for backends (an API key)") }
    }
}
