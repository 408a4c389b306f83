import ParleyCore
import SwiftProtobuf

// Conversions between the engine's model and the `chat.v1` messages. Field for field the same
// as the JSON of the other transports (`room` -> `room_id`, `user` -> `sender_id`/`user_id`).

extension Google_Protobuf_Timestamp {
    init(_ timestamp: Timestamp) {
        let (seconds, milliseconds) = timestamp.milliseconds.quotientAndRemainder(dividingBy: 1000)
        // Normalised: nanos is never negative, as the Timestamp spec requires.
        let borrow: Int64 = milliseconds < 0 ? 1 : 0
        self.init(seconds: seconds - borrow, nanos: Int32((milliseconds + borrow * 1000) * 1_000_000))
    }
}

extension Chat_V1_ChatMessage {
    init(_ message: ParleyCore.Message) {
        self.init()
        id = message.id
        roomID = message.room
        senderID = message.user
        content = message.content
        seq = message.seq
        timestamp = Google_Protobuf_Timestamp(message.timestamp)
        if let clientId = message.clientId { clientID = clientId }
        if message.kind != .message {
            kind = Chat_V1_MessageKind(message.kind)
            targetID = message.target ?? ""
            if let until = message.until { self.until = Google_Protobuf_Timestamp(until) }
            return
        }
        if let replyTo = message.replyTo { self.replyTo = replyTo }
        if let answered = message.quote {
            quote = .with {
                $0.id = answered.id
                $0.senderID = answered.user
                $0.content = answered.content
                $0.deleted = answered.deleted
            }
        }
        if let edited = message.edited { self.edited = Google_Protobuf_Timestamp(edited) }
        deleted = message.deleted
        reactions = message.reactions.map { reaction in
            .with {
                $0.emoji = reaction.emoji
                $0.userIds = reaction.users
            }
        }
        if !message.deleted { mentions = Mentions.users(in: message.content, limits: Limits()) }
        attachments = message.attachments.map(Chat_V1_Attachment.init)
    }
}

extension Chat_V1_MessageKind {
    private static let kinds: [(MessageKind, Chat_V1_MessageKind)] = [
        (.message, .message), (.edit, .edit), (.delete, .delete), (.react, .react), (.unreact, .unreact),
        (.kick, .kick), (.mute, .mute), (.unmute, .unmute), (.ban, .ban), (.unban, .unban),
    ]

    init(_ kind: MessageKind) {
        self = Self.kinds.first { $0.0 == kind }?.1 ?? .message
    }

    /// The engine's kind; nil for an unknown value.
    var kind: MessageKind? {
        Self.kinds.first { $0.1 == self }?.0
    }
}


extension Chat_V1_Presence {
    init(_ entry: PresenceEntry) {
        self.init()
        userID = entry.user
        since = Google_Protobuf_Timestamp(entry.since)
    }
}

extension Chat_V1_HistoryResponse {
    init(_ page: HistoryPage) {
        self.init()
        messages = page.messages.map(Chat_V1_ChatMessage.init)
        hasMore_p = page.hasMore
    }
}

extension Chat_V1_PresenceResponse {
    init(_ page: Engine.PresencePage) {
        self.init()
        roomID = page.room
        users = page.users.map(Chat_V1_Presence.init)
        online = Int32(clamping: page.online)
        hasMore_p = page.hasMore
    }
}

extension Chat_V1_JoinResult {
    init(_ ack: Engine.JoinAck) {
        self.init()
        roomID = ack.room
        seq = ack.seq
        users = ack.users.map(Chat_V1_Presence.init)
        online = Int32(clamping: ack.online)
        hasMore_p = ack.hasMore
    }
}

extension Chat_V1_ChatEvent {
    init(_ event: ServerEvent) {
        self.init()
        switch event {
        case .message(let message):
            self.message = Chat_V1_ChatMessage(message)
        case .join(let room, let user, let timestamp):
            join = .with {
                $0.roomID = room
                $0.userID = user
                $0.timestamp = Google_Protobuf_Timestamp(timestamp)
            }
        case .leave(let room, let user, let timestamp):
            leave = .with {
                $0.roomID = room
                $0.userID = user
                $0.timestamp = Google_Protobuf_Timestamp(timestamp)
            }
        case .typing(let room, let user, let typing):
            self.typing = .with {
                $0.roomID = room
                $0.userID = user
                $0.typing = typing
            }
        case .read(let room, let user, let seq):
            read = .with {
                $0.roomID = room
                $0.userID = user
                $0.seq = seq
            }
        case .presence(let room, let online, let joined, let left):
            presence = .with {
                $0.roomID = room
                $0.online = Int32(clamping: online)
                $0.joined = joined
                $0.left = left
            }
        case .ownRead(let user, let room, let seq):
            read = .with {
                $0.roomID = room
                $0.userID = user
                $0.seq = seq
            }
        case .notify(_, let kind, let message):
            notify = .with {
                $0.kind = kind.rawValue
                $0.message = Chat_V1_ChatMessage(message)
            }
        case .call(let signal):
            call = .with {
                $0.call = signal.call
                $0.type = signal.kind.rawValue
                $0.fromUserID = signal.from
                $0.fromSession = signal.fromSession
                $0.video = signal.video
                if let data = signal.data { $0.data = data }
                $0.iceServers = signal.iceServers.map(Chat_V1_IceServer.init)
            }
        }
    }

    static func ack(_ requestID: String, _ result: Chat_V1_Ack.OneOf_Result) -> Chat_V1_ChatEvent {
        .with {
            $0.ack = .with {
                $0.requestID = requestID
                $0.result = result
            }
        }
    }

    static func error(_ error: ParleyError, requestID: String) -> Chat_V1_ChatEvent {
        .with { $0.error = Chat_V1_ChatError(error, requestID: requestID) }
    }

    static func pong(_ requestID: String) -> Chat_V1_ChatEvent {
        .with { $0.pong = .with { $0.requestID = requestID } }
    }
}

extension Chat_V1_ChatError {
    init(_ error: ParleyError, requestID: String) {
        self.init()
        self.requestID = requestID
        code = Chat_V1_ErrorCode(rawValue: error.grpcCode.rawValue) ?? .internal
        message = error.message
        reason = error.code.name
        if let retryAfterMs = error.retryAfterMs { self.retryAfterMs = Int64(retryAfterMs) }
    }
}

extension Chat_V1_IceServer {
    init(_ server: ICEServer) {
        self.init()
        urls = server.urls
        if let username = server.username { self.username = username }
        if let credential = server.credential { self.credential = credential }
    }
}
