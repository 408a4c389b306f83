import Foundation
import Hummingbird
import NIOCore
import ParleyCore

/// Web Push for the web client (and any browser client): the server's VAPID key, a browser's
/// subscription, and the user's muted rooms. A user token acts as its user; in open mode, or
/// with an API key, the user is named (`user` in the body or `?user=`).
struct PushRoutes {
    let engine: Engine
    let auth: RequestAuth

    private struct SubscriptionBody: Decodable {
        struct Keys: Decodable {
            var p256dh: String
            var auth: String
        }
        var endpoint: String
        var keys: Keys
        var user: String?
    }

    private struct SettingsBody: Decodable {
        var muteAll: Bool?
        var mutedRooms: [String]?
        var user: String?
    }

    func register(on router: Router<ParleyRequestContext>) {
        let push = router.group("api/push")
        push.get("key") { _, _ -> Response in
            let key = try await engine.pushPublicKey()
            return Response.json { json in
                json.object { json in
                    json.key("publicKey"); json.string(Base64.encode(key, url: true))
                }
            }
        }
        push.post("subscriptions") { request, context -> Response in
            let body = try await JSONBody.decode(SubscriptionBody.self, from: request, limit: engine.limits.maxFrameBytes)
            let identity = try await user(request, claimed: body.user ?? request.uri.queryParameters["user"].map(String.init))
            try engine.charge(reader: identity, anonymous: false, address: context.channel.remoteAddress?.ipAddress)
            try await engine.subscribePush(identity, endpoint: body.endpoint, p256dh: body.keys.p256dh, auth: body.keys.auth)
            return Response.json(.created) { json in
                json.object { json in
                    json.key("endpoint"); json.string(body.endpoint)
                    json.key("user"); json.string(identity.user)
                }
            }
        }
        push.get("subscriptions") { request, context -> Response in
            let identity = try await user(request, claimed: request.uri.queryParameters["user"].map(String.init))
            try engine.charge(reader: identity, anonymous: false, address: context.channel.remoteAddress?.ipAddress)
            let subscriptions = try await engine.pushSubscriptions(identity)
            return Response.json { json in
                json.object { json in
                    json.key("user"); json.string(identity.user)
                    json.key("subscriptions"); json.array(subscriptions) { json, subscription in
                        json.object { json in json.key("endpoint"); json.string(subscription.endpoint) }
                    }
                }
            }
        }
        push.delete("subscriptions") { request, context -> Response in
            let query = request.uri.queryParameters
            guard let endpoint = query["endpoint"].map(String.init), !endpoint.isEmpty else {
                throw ParleyError.badRequest("missing query parameter 'endpoint'")
            }
            let identity = try await user(request, claimed: query["user"].map(String.init))
            try engine.charge(reader: identity, anonymous: false, address: context.channel.remoteAddress?.ipAddress)
            try await engine.unsubscribePush(identity, endpoint: endpoint)
            return Response(status: .noContent)
        }
        push.get("settings") { request, context -> Response in
            let identity = try await user(request, claimed: request.uri.queryParameters["user"].map(String.init))
            try engine.charge(reader: identity, anonymous: false, address: context.channel.remoteAddress?.ipAddress)
            return settings(identity, try await engine.pushMutes(identity))
        }
        push.put("settings") { request, context -> Response in
            let body = try await JSONBody.decode(SettingsBody.self, from: request, limit: engine.limits.maxFrameBytes)
            let identity = try await user(request, claimed: body.user ?? request.uri.queryParameters["user"].map(String.init))
            try engine.charge(reader: identity, anonymous: false, address: context.channel.remoteAddress?.ipAddress)
            // A field left out keeps its value.
            var muted = try await engine.pushMutes(identity)
            if let rooms = body.mutedRooms { muted = Set(rooms).union(muted.filter { $0 == PushSettings.everyRoom }) }
            if let all = body.muteAll {
                if all { muted.insert(PushSettings.everyRoom) } else { muted.remove(PushSettings.everyRoom) }
            }
            return settings(identity, try await engine.setPushMutes(identity, rooms: Array(muted)))
        }
    }

    private func user(_ request: Request, claimed: String?) async throws -> Identity {
        try await auth.identity(request, claimedUser: claimed).acting(as: claimed, field: "user", limits: engine.limits)
    }

    private func settings(_ identity: Identity, _ muted: Set<String>) -> Response {
        Response.json { json in
            json.object { json in
                json.key("user"); json.string(identity.user)
                json.key("muteAll"); json.bool(muted.contains(PushSettings.everyRoom))
                json.key("mutedRooms"); json.array(muted.subtracting([PushSettings.everyRoom]).sorted()) { json, room in json.string(room) }
            }
        }
    }
}

/// A JSON request body, bounded, with the same errors as every other body.
enum JSONBody {
    static func decode<T: Decodable>(_ type: T.Type, from request: Request, limit: Int) async throws -> T {
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: limit)
        } catch let error as any HTTPResponseError where error.status == .contentTooLarge {
            throw ParleyError(.tooLarge, "the body is larger than \(limit) bytes")
        }
        do {
            return try JSONDecoder().decode(T.self, from: Data(buffer.readableBytesView))
        } catch {
            throw ClientFrameDecoder.describe(error)
        }
    }
}
