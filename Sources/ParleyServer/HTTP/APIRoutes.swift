import Foundation
import Hummingbird
import NIOCore
import ParleyCore

/// The HTTP API of PROTOCOL.md, for backends: post, history, presence, rooms, users. Every call
/// goes through the same engine as the WebSocket; errors answer `{"error": {"code", "message"}}`.
struct APIRoutes {
    let engine: Engine
    let auth: RequestAuth

    private struct PostBody: Decodable {
        var content: String?
        var clientId: String?
        var user: String?
        var replyTo: String?
        var attachments: [String]?
    }

    private struct EditBody: Decodable {
        var content: String
        var clientId: String?
        var user: String?
    }

    private struct ReactBody: Decodable {
        var emoji: String
        var add: Bool?
        var clientId: String?
        var user: String?
    }

    private struct ModerateBody: Decodable {
        var action: String
        var user: String
        var seconds: Int64?
        var reason: String?
        var clientId: String?
        /// With an API key: the moderator it acts as.
        var moderator: String?
    }

    /// Applies a change to message `:id` of `:room`; answers the message as it is now.
    private func change(
        _ request: Request, _ context: ParleyRequestContext, user: String?, action: MessageChange.Action, content: String = "", clientId: String?
    ) async throws -> Response {
        let identity = try await auth.identity(request, claimedUser: user)
        let result = try await engine.change(
            identity, as: user, room: try context.parameters.require("room"), target: try context.parameters.require("id"),
            action: action, content: content, clientId: clientId
        )
        return Response.json { WireJSON.message(result.target ?? result.message, into: &$0) }
    }

    func register(on router: Router<ParleyRequestContext>) {
        let api = router.group("api")
        api.post("rooms/:room/messages") { request, context -> Response in
            let body = try await decode(PostBody.self, from: request)
            // `content` may be left out only by a message that shares files.
            if body.content == nil, body.attachments?.isEmpty != false { throw ParleyError.badRequest("missing field 'content'") }
            let identity = try await auth.identity(request, claimedUser: body.user)
            let stored = try await engine.publish(
                identity, as: body.user, room: try context.parameters.require("room"),
                content: body.content ?? "", clientId: body.clientId, replyTo: body.replyTo, attachments: body.attachments ?? []
            )
            return Response.json(.created) { WireJSON.message(stored.message, into: &$0) }
        }
        api.post("rooms/:room/moderation") { request, context -> Response in
            let body = try await decode(ModerateBody.self, from: request)
            guard let action = MessageKind(rawValue: body.action), action.isModeration else {
                throw ParleyError.badRequest("field 'action' must be kick, mute, unmute, ban or unban")
            }
            let identity = try await auth.identity(request, claimedUser: body.moderator)
            let stored = try await engine.moderate(
                identity, as: body.moderator, room: try context.parameters.require("room"), user: body.user, action: action,
                duration: body.seconds.map { .seconds($0) }, reason: body.reason, clientId: body.clientId
            )
            return Response.json(.created) { WireJSON.message(stored.message, into: &$0) }
        }
        api.patch("rooms/:room/messages/:id") { request, context -> Response in
            let body = try await decode(EditBody.self, from: request)
            return try await change(request, context, user: body.user, action: .edit, content: body.content, clientId: body.clientId)
        }
        api.delete("rooms/:room/messages/:id") { request, context -> Response in
            let user = request.uri.queryParameters["user"].map(String.init)
            return try await change(request, context, user: user, action: .delete, clientId: nil)
        }
        api.post("rooms/:room/messages/:id/reactions") { request, context -> Response in
            let body = try await decode(ReactBody.self, from: request)
            let intent: MessageChange.ReactionIntent = body.add.map { $0 ? .add : .remove } ?? .toggle
            return try await change(request, context, user: body.user, action: .react(intent), content: body.emoji, clientId: body.clientId)
        }
        api.get("rooms/:room/messages") { request, context -> Response in
            let query = request.uri.queryParameters
            let limit = try QueryValues.int64(query["limit"], name: "limit").map { Int(clamping: $0) }
            let reader = try await admit(request, context, historyLimit: limit ?? engine.limits.defaultHistoryLimit)
            let page = try await engine.history(
                reader, room: try context.parameters.require("room"),
                before: try QueryValues.int64(query["before"], name: "before"),
                after: try QueryValues.int64(query["after"], name: "after"),
                limit: limit
            )
            return Response.json { WireJSON.page(page, into: &$0) }
        }
        api.get("rooms/:room/presence") { request, context -> Response in
            let reader = try await admit(request, context)
            let room = try context.parameters.require("room")
            let query = request.uri.queryParameters
            let page = try await engine.presence(
                reader, room: room, after: query["after"].map(String.init),
                limit: try QueryValues.int64(query["limit"], name: "limit").map { Int(clamping: $0) }
            )
            return Response.json { WireJSON.presence(page, into: &$0) }
        }
        api.get("rooms") { request, context -> Response in
            let rooms = try await engine.rooms(try await admit(request, context, historyLimit: engine.limits.maxHistoryLimit))
            return Response.json { json in
                json.object { json in
                    json.key("rooms")
                    json.array(rooms) { json, room in
                        json.object { json in
                            json.key("room"); json.string(room.room)
                            json.key("seq"); json.number(room.seq)
                            json.key("online"); json.number(room.online)
                        }
                    }
                }
            }
        }
        api.get("search") { request, context -> Response in
            let query = request.uri.queryParameters
            let limit = try QueryValues.int64(query["limit"], name: "limit").map { Int(clamping: $0) }
            let reader = try await admit(request, context, historyLimit: limit ?? engine.limits.defaultHistoryLimit)
            let page = try await engine.search(
                reader, text: query["q"].map(String.init) ?? "", before: query["before"].map(String.init), limit: limit
            )
            return Response.json { WireJSON.page(page, into: &$0) }
        }
        // The caller's rooms with unread counts: a user token's own; an API key (or open mode)
        // names the user with `?user=`.
        api.get("me/rooms") { request, context -> Response in
            let claimed = request.uri.queryParameters["user"].map(String.init)
            var identity = try await auth.identity(request, claimedUser: claimed)
            identity = try identity.acting(as: claimed, field: "user", limits: engine.limits)
            try engine.charge(reader: identity, anonymous: false, address: context.channel.remoteAddress?.ipAddress)
            let entries = try await engine.inbox(identity)
            return Response.json { json in
                json.object { json in
                    json.key("user"); json.string(identity.user)
                    json.key("rooms"); json.array(entries) { json, entry in WireJSON.inboxEntry(entry, into: &json) }
                }
            }
        }
        api.get("users/:user") { request, context -> Response in
            let reader = try await admit(request, context)
            let user = try context.parameters.require("user")
            let rooms = try await engine.userRooms(reader, user: user)
            guard !rooms.isEmpty else { throw ParleyError(.notFound, "user \(user) is not online") }
            return Response.json { json in
                json.object { json in
                    json.key("user"); json.string(user)
                    json.key("online"); json.bool(true)
                    json.key("rooms"); json.array(rooms) { json, room in json.string(room) }
                }
            }
        }
    }

    /// The reader of a read call, charged to its budget: a user's token to that user's, an
    /// anonymous read (open mode) to its address's; a backend's API key is not limited.
    private func admit(_ request: Request, _ context: ParleyRequestContext, historyLimit: Int? = nil) async throws -> Identity {
        let reader = try await auth.reader(request)
        try engine.charge(reader: reader, anonymous: auth.bearerToken(request) == nil, address: context.channel.remoteAddress?.ipAddress, historyLimit: historyLimit)
        return reader
    }

    private func decode<T: Decodable>(_ type: T.Type, from request: Request) async throws -> T {
        try await JSONBody.decode(type, from: request, limit: engine.limits.maxFrameBytes)
    }

}
