import Foundation
import NIOCore
import NIOFoundationCompat
import ParleyCore

/// Parses `{"event": NAME, "data": {...}, "id": N}` frames with an exact error for each
/// malformed input. Unknown fields are ignored, so clients may send newer fields.
struct ClientFrameDecoder {
    struct Failure: Error {
        var id: RequestID?
        var error: ParleyError
    }

    /// One for every connection: decoding is thread-safe, and an idle socket keeps no decoder.
    private static let shared = JSONDecoder()
    private var decoder: JSONDecoder { Self.shared }

    func decode(_ text: String) -> Result<(RequestID?, Command), Failure> {
        decode(Data(text.utf8))
    }

    func decode(_ buffer: ByteBuffer) -> Result<(RequestID?, Command), Failure> {
        decode(Data(buffer.readableBytesView))
    }

    func decode(_ bytes: Data) -> Result<(RequestID?, Command), Failure> {
        let header: Header
        do {
            header = try decoder.decode(Header.self, from: bytes)
        } catch {
            return .failure(Failure(id: nil, error: Self.describe(error)))
        }
        if let problem = header.problem { return .failure(Failure(id: header.id, error: problem)) }
        do {
            return .success((header.id, try command(header.event, bytes)))
        } catch let error as ParleyError {
            return .failure(Failure(id: header.id, error: error))
        } catch {
            return .failure(Failure(id: header.id, error: Self.describe(error, jsonIsValid: true)))
        }
    }

    /// A Socket.IO event: its name and first argument, decoded as a frame's `event` and `data`.
    /// `refresh` carries a fresh token (`connect` is a reserved name in Socket.IO clients).
    func command(event: String, argument: Any?) -> Result<Command, ParleyError> {
        do {
            guard event != "connect" else { throw ParleyError.badRequest("unknown event 'connect': authenticate in the CONNECT packet's auth, refresh with 'refresh'") }
            let name = event == "refresh" ? "connect" : event
            let body = try JSONSerialization.data(withJSONObject: ["data": argument ?? NSNull()], options: [.fragmentsAllowed])
            return .success(try command(name, body))
        } catch let error as ParleyError {
            return .failure(error)
        } catch {
            return .failure(Self.describe(error, jsonIsValid: true))
        }
    }

    private func command(_ event: String, _ bytes: Data) throws -> Command {
        switch event {
        case "connect":
            let data = try decoder.decode(OptionalBody<ConnectData>.self, from: bytes).data
            return .connect(token: data?.token, user: data?.user)
        case "join":
            let data = try body(JoinData.self, bytes)
            return .join(room: data.room, since: data.since)
        case "dm":
            let data = try body(DirectData.self, bytes)
            return .direct(user: data.user, since: data.since)
        case "leave":
            return .leave(room: try body(RoomData.self, bytes).room)
        case "message":
            let data = try body(MessageData.self, bytes)
            // `content` may be left out only by a message that shares files.
            guard let content = data.content ?? (data.attachments?.isEmpty == false ? "" : nil) else {
                throw ParleyError.badRequest("missing field 'data.content'")
            }
            return .message(room: data.room, content: content, clientId: data.clientId, replyTo: data.replyTo, attachments: data.attachments ?? [])
        case "edit":
            let data = try body(EditData.self, bytes)
            return .change(room: data.room, id: data.id, action: .edit, content: data.content, clientId: data.clientId)
        case "delete":
            let data = try body(TargetData.self, bytes)
            return .change(room: data.room, id: data.id, action: .delete, content: "", clientId: data.clientId)
        case "react":
            let data = try body(ReactData.self, bytes)
            let intent: MessageChange.ReactionIntent = switch data.add {
            case true?: .add
            case false?: .remove
            case nil: .toggle
            }
            return .change(room: data.room, id: data.id, action: .react(intent), content: data.emoji, clientId: data.clientId)
        case "moderate":
            let data = try body(ModerateData.self, bytes)
            guard let action = MessageKind(rawValue: data.action), action.isModeration else {
                throw ParleyError.badRequest("field 'action' must be kick, mute, unmute, ban or unban")
            }
            return .moderate(room: data.room, user: data.user, action: action, seconds: data.seconds, reason: data.reason, clientId: data.clientId)
        case "call":
            let data = try body(CallData.self, bytes)
            return .call(user: data.user, video: data.video ?? false)
        case "signal":
            let data = try body(SignalData.self, bytes)
            guard let kind = CallSignal.Kind(rawValue: data.type), Self.sentKinds.contains(kind) else {
                throw ParleyError.badRequest("field 'data.type' must be one of \(Self.sentKinds.map(\.rawValue).sorted().joined(separator: ", "))")
            }
            return .signal(call: data.call, kind: kind, data: data.data, toSession: data.toSession)
        case "visibility":
            return .visibility(visible: try body(VisibilityData.self, bytes).visible)
        case "typing":
            let data = try body(TypingData.self, bytes)
            return .typing(room: data.room, typing: data.typing)
        case "read":
            let data = try body(ReadData.self, bytes)
            return .read(room: data.room, seq: data.seq)
        case "history":
            let data = try body(HistoryData.self, bytes)
            return .history(room: data.room, before: data.before, after: data.after, limit: data.limit)
        case "presence":
            let data = try body(PresenceData.self, bytes)
            return .presence(room: data.room, after: data.after, limit: data.limit)
        case "rooms":
            return .inbox
        case "search":
            let data = try body(SearchData.self, bytes)
            return .search(text: data.text, before: data.before, limit: data.limit)
        case "ping":
            return .ping
        default:
            throw ParleyError.badRequest("unknown event '\(event)'")
        }
    }

    /// The signals a client sends (the server sends `ring`, `answered` and `missed`).
    static let sentKinds: Set<CallSignal.Kind> = [.accept, .decline, .busy, .cancel, .hangup, .offer, .answer, .candidate]

    private func body<T: Decodable>(_ type: T.Type, _ bytes: Data) throws -> T {
        try decoder.decode(Body<T>.self, from: bytes).data
    }

    /// Names the offending field, as a client author needs to fix their code.
    /// `jsonIsValid`: the frame already parsed, so a path-less corruption is a bad value
    /// (such as 1.5 for an integer), not bad syntax.
    static func describe(_ error: any Error, jsonIsValid: Bool = false) -> ParleyError {
        guard let error = error as? DecodingError else { return .badRequest("invalid frame") }
        func path(_ context: DecodingError.Context, _ extra: (any CodingKey)? = nil) -> String {
            (context.codingPath + (extra.map { [$0] } ?? [])).map(\.stringValue).joined(separator: ".")
        }
        switch error {
        case .dataCorrupted(let context) where context.codingPath.isEmpty:
            return .badRequest(jsonIsValid ? "a field has an invalid value: \(context.debugDescription)" : "frame is not valid JSON")
        case .typeMismatch(_, let context) where context.codingPath.isEmpty:
            return .badRequest("frame must be a JSON object")
        case .keyNotFound(let key, let context):
            return .badRequest("missing field '\(path(context, key))'")
        case .typeMismatch(let type, let context):
            return .badRequest("field '\(path(context))' must be \(typeName(type))")
        case .valueNotFound(let type, let context):
            return .badRequest("field '\(path(context))' must be \(typeName(type)), not null")
        case .dataCorrupted(let context):
            return .badRequest("field '\(path(context))' is invalid")
        @unknown default:
            return .badRequest("invalid frame")
        }
    }

    private static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is Bool.Type: "a boolean"
        case is Int64.Type, is Int.Type: "an integer"
        default: "an object"
        }
    }
}

private struct Header: Decodable {
    var id: RequestID?
    var event = ""
    var problem: ParleyError?

    enum CodingKeys: String, CodingKey { case id, event }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        if container.contains(.id) {
            guard let id = try? container.decode(RequestID.self, forKey: .id) else {
                problem = .badRequest("field 'id' must be an integer or a string")
                return
            }
            self.id = id
        }
        do {
            event = try container.decode(String.self, forKey: .event)
        } catch {
            problem = ClientFrameDecoder.describe(error)
        }
    }
}

private struct Body<T: Decodable>: Decodable { var data: T }
private struct OptionalBody<T: Decodable>: Decodable { var data: T? }
private struct ConnectData: Decodable { var token: String?; var user: String? }
private struct RoomData: Decodable { var room: String }
private struct JoinData: Decodable { var room: String; var since: Int64? }
private struct DirectData: Decodable { var user: String; var since: Int64? }
private struct SearchData: Decodable { var text: String; var before: String?; var limit: Int? }
private struct MessageData: Decodable {
    var room: String; var content: String?; var clientId: String?; var replyTo: String?; var attachments: [String]?
}
private struct EditData: Decodable { var room: String; var id: String; var content: String; var clientId: String? }
private struct TargetData: Decodable { var room: String; var id: String; var clientId: String? }
private struct ModerateData: Decodable {
    var room: String; var user: String; var action: String; var seconds: Int64?; var reason: String?; var clientId: String?
}
private struct ReactData: Decodable { var room: String; var id: String; var emoji: String; var add: Bool?; var clientId: String? }
private struct CallData: Decodable { var user: String; var video: Bool? }
private struct SignalData: Decodable { var call: String; var type: String; var data: String?; var toSession: String? }
private struct VisibilityData: Decodable { var visible: Bool }
private struct TypingData: Decodable { var room: String; var typing: Bool }
private struct ReadData: Decodable { var room: String; var seq: Int64 }
private struct PresenceData: Decodable { var room: String; var after: String?; var limit: Int? }
private struct HistoryData: Decodable { var room: String; var before: Int64?; var after: Int64?; var limit: Int? }
