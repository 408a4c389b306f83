import NIOCore

/// The commands of the protocol, as every transport decodes them: the command table of
/// docs/protocol.md. A transport turns its bytes (a JSON frame, a protobuf `ChatCommand`, a
/// Socket.IO event) into one of these and hands it to its `Connection`.
public enum Command: Sendable, Equatable {
    case connect(token: String?, user: String?)
    case join(room: String, since: Int64?)
    /// Joins the direct-message room of the session's user and `user` (`DirectRoom`).
    case direct(user: String, since: Int64?)
    case leave(room: String)
    /// A new message; `replyTo` names the message it answers.
    case message(room: String, content: String, clientId: String?, replyTo: String? = nil, attachments: [String] = [])
    /// Changes the message `id` (`MessageChange`): for `.edit`, `content` is its new
    /// content; for `.react`, the emoji.
    case change(room: String, id: String, action: MessageChange.Action, content: String, clientId: String?)
    /// A moderator's action on `user` (`Engine.moderate`); `seconds` for a timed mute or ban.
    case moderate(room: String, user: String, action: MessageKind, seconds: Int64?, reason: String?, clientId: String?)
    /// Calls `user` (docs/protocol.md, "Calls").
    case call(user: String, video: Bool)
    /// A step of a call's signalling (`CallSignal.Kind`), to `toSession` when given.
    case signal(call: String, kind: CallSignal.Kind, data: String?, toSession: String?)
    /// Whether the client shows Parley to its user now (docs/protocol.md, "Web Push").
    case visibility(visible: Bool)
    case typing(room: String, typing: Bool)
    case read(room: String, seq: Int64)
    case history(room: String, before: Int64?, after: Int64?, limit: Int?)
    /// A page of the room's users: after `after` (sorted by id), at most `limit`.
    case presence(room: String, after: String? = nil, limit: Int? = nil)
    /// The user's rooms with their unread counts (`MessageStore.inbox`).
    case inbox
    /// Messages with every word of `text`, in the rooms the user may read, newest first.
    case search(text: String, before: String?, limit: Int?)
    case ping
}

/// The id a client put on a command, echoed on its reply or error (a WebSocket frame's `id`, a
/// gRPC `request_id`, a Socket.IO ack id).
public enum RequestID: Sendable, Hashable, Decodable {
    case number(Int64)
    case string(String)

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let number = try? container.decode(Int64.self) {
            self = .number(number)
        } else {
            self = .string(try container.decode(String.self))
        }
    }
}

/// The successful answer to a command; a failed one is answered with its `ParleyError`.
public enum Reply: Sendable {
    case connected(user: String, session: String)
    case joined(Engine.JoinAck)
    case left(room: String)
    case published(AppendResult)
    /// A change was applied (or changed nothing): the message as it is now.
    case changed(Message)
    case typing(room: String, typing: Bool)
    case read(room: String, seq: Int64)
    /// A call started: its id and the ICE servers to use.
    case callStarted(Engine.CallStart)
    /// A signal was relayed.
    case signaled
    case visibility(visible: Bool)
    case history(HistoryPage)
    case presence(Engine.PresencePage)
    case inbox([InboxEntry])
    /// Search results, newest first; `hasMore` when older ones match too.
    case searched(HistoryPage)
    case pong
}

/// One wire format: encodes room events (once per event, shared by every session that uses
/// the format), replies and errors for a single connection. `nil` from `encode(_:id:)` means
/// the wire sends nothing for that reply (a WebSocket frame without an `id` gets no ack).
public protocol WireFormat: EventEncoder {
    func encode(_ reply: Reply, id: RequestID?) -> ByteBuffer?
    func encode(_ error: ParleyError, id: RequestID?) -> ByteBuffer
}
