import ParleyCore
import SwiftProtobuf

// The other direction of ProtoConversions, for a client of `Chat` that speaks the engine's
// terms (the WebSocket gateway): commands to `ChatCommand`s, `ChatEvent`s back to events,
// replies and errors. Field for field the inverse of what the server sends, so that a frame
// encoded from the result is the frame the server itself would have sent on a WebSocket.

/// What an upstream `Chat` stream sent.
public enum UpstreamFrame: Sendable {
    case event(ServerEvent)
    /// The answer to the command sent with `requestID`.
    case reply(Reply, requestID: String)
    case error(ParleyError, requestID: String)
}

extension Chat_V1_ChatCommand {
    public init(_ command: Command, requestID: String) {
        self.init()
        self.requestID = requestID
        switch command {
        case .connect(let token, let user):
            connect = .with {
                $0.token = token ?? ""
                $0.user = user ?? ""
            }
        case .join(let room, let since):
            join = .with {
                $0.roomID = room
                if let since { $0.sinceSeq = since }
            }
        case .direct(let user, let since):
            dm = .with {
                $0.userID = user
                if let since { $0.sinceSeq = since }
            }
        case .leave(let room):
            leave = .with { $0.roomID = room }
        case .message(let room, let content, let clientId, let replyTo, let attachments):
            message = .with {
                $0.roomID = room
                $0.content = content
                if let clientId { $0.clientID = clientId }
                if let replyTo { $0.replyTo = replyTo }
                $0.attachmentIds = attachments
            }
        case .change(let room, let id, let action, let content, let clientId):
            switch action {
            case .edit:
                edit = .with {
                    $0.roomID = room
                    $0.messageID = id
                    $0.content = content
                    if let clientId { $0.clientID = clientId }
                }
            case .delete:
                delete = .with {
                    $0.roomID = room
                    $0.messageID = id
                    if let clientId { $0.clientID = clientId }
                }
            case .react(let intent):
                react = .with {
                    $0.roomID = room
                    $0.messageID = id
                    $0.emoji = content
                    switch intent {
                    case .add: $0.add = true
                    case .remove: $0.add = false
                    case .toggle: break
                    }
                    if let clientId { $0.clientID = clientId }
                }
            }
        case .moderate(let room, let user, let action, let seconds, let reason, let clientId):
            moderate = .with {
                $0.roomID = room
                $0.userID = user
                $0.action = Chat_V1_MessageKind(action)
                if let seconds { $0.seconds = seconds }
                if let reason { $0.reason = reason }
                if let clientId { $0.clientID = clientId }
            }
        case .call(let user, let video):
            call = .with {
                $0.userID = user
                $0.video = video
            }
        case .signal(let call, let kind, let data, let toSession):
            signal = .with {
                $0.call = call
                $0.type = kind.rawValue
                if let data { $0.data = data }
                if let toSession { $0.toSession = toSession }
            }
        case .visibility(let visible):
            visibility = .with { $0.visible = visible }
        case .typing(let room, let typing):
            self.typing = .with {
                $0.roomID = room
                $0.typing = typing
            }
        case .read(let room, let seq):
            read = .with {
                $0.roomID = room
                $0.seq = seq
            }
        case .history(let room, let before, let after, let limit):
            history = .with {
                $0.roomID = room
                if let before { $0.beforeSeq = before }
                if let after { $0.afterSeq = after }
                if let limit { $0.limit = Int32(clamping: limit) }
            }
        case .presence(let room, let after, let limit):
            presence = .with {
                $0.roomID = room
                if let after { $0.afterUser = after }
                if let limit { $0.limit = Int32(clamping: limit) }
            }
        case .inbox:
            rooms = .init()
        case .search(let text, let before, let limit):
            search = .with {
                $0.text = text
                if let before { $0.beforeID = before }
                if let limit { $0.limit = Int32(clamping: limit) }
            }
        case .ping:
            ping = .init()
        }
    }
}

extension UpstreamFrame {
    /// The frame an event carries; nil for an event with nothing set (a newer server's kind).
    public init?(_ event: Chat_V1_ChatEvent) {
        guard let body = event.event else { return nil }
        switch body {
        case .message(let message):
            self = .event(.message(ParleyCore.Message(message)))
        case .join(let join):
            self = .event(.join(room: join.roomID, user: join.userID, timestamp: Timestamp(join.timestamp)))
        case .leave(let leave):
            self = .event(.leave(room: leave.roomID, user: leave.userID, timestamp: Timestamp(leave.timestamp)))
        case .typing(let typing):
            self = .event(.typing(room: typing.roomID, user: typing.userID, typing: typing.typing))
        case .read(let read):
            self = .event(.read(room: read.roomID, user: read.userID, seq: read.seq))
        case .presence(let presence):
            self = .event(.presence(room: presence.roomID, online: Int(presence.online), joined: presence.joined, left: presence.left))
        case .notify(let notification):
            guard let kind = NotificationKind(rawValue: notification.kind) else { return nil }
            self = .event(.notify(user: "", kind: kind, message: ParleyCore.Message(notification.message)))
        case .call(let call):
            guard let kind = CallSignal.Kind(rawValue: call.type) else { return nil }
            self = .event(.call(CallSignal(
                call: call.call, kind: kind, from: call.fromUserID, fromSession: call.fromSession, to: "",
                data: call.hasData ? call.data : nil, video: call.video, iceServers: call.iceServers.map(ICEServer.init)
            )))
        case .pong(let pong):
            self = .reply(.pong, requestID: pong.requestID)
        case .error(let error):
            let code = ParleyError.Code(name: error.reason) ?? .internal
            self = .error(
                ParleyError(code, error.message, retryAfterMs: error.hasRetryAfterMs ? Int(error.retryAfterMs) : nil), requestID: error.requestID
            )
        case .ack(let ack):
            guard let reply = Reply(ack) else { return nil }
            self = .reply(reply, requestID: ack.requestID)
        }
    }
}

extension Reply {
    init?(_ ack: Chat_V1_Ack) {
        guard let result = ack.result else { return nil }
        switch result {
        case .connect(let connect):
            self = .connected(user: connect.userID, session: connect.session)
        case .join(let join):
            self = .joined(Engine.JoinAck(
                room: join.roomID, seq: join.seq, users: join.users.map(PresenceEntry.init), online: Int(join.online), hasMore: join.hasMore_p
            ))
        case .leave(let leave):
            self = .left(room: leave.roomID)
        case .message(let ack):
            self = .published(AppendResult(message: ParleyCore.Message(ack.message), duplicate: ack.duplicate))
        case .typing(let typing):
            self = .typing(room: typing.roomID, typing: typing.typing)
        case .read(let read):
            self = .read(room: read.roomID, seq: read.seq)
        case .history(let page):
            self = .history(HistoryPage(page))
        case .presence(let page):
            self = .presence(Engine.PresencePage(
                room: page.roomID, users: page.users.map(PresenceEntry.init), online: Int(page.online), hasMore: page.hasMore_p
            ))
        case .rooms(let inbox):
            self = .inbox(inbox.rooms.map { room in
                InboxEntry(
                    room: room.roomID, seq: room.seq, lastMessage: room.hasLastMessage ? ParleyCore.Message(room.lastMessage) : nil,
                    readSeq: room.readSeq, unread: Int(room.unread), mentions: Int(room.mentions)
                )
            })
        case .search(let page):
            self = .searched(HistoryPage(page))
        case .change(let change):
            self = .changed(ParleyCore.Message(change.message))
        case .call(let call):
            self = .callStarted(Engine.CallStart(call: call.call, iceServers: call.iceServers.map(ICEServer.init)))
        case .signal:
            self = .signaled
        case .visibility(let visibility):
            self = .visibility(visible: visibility.visible)
        }
    }
}

extension HistoryPage {
    init(_ page: Chat_V1_HistoryResponse) {
        self.init(messages: page.messages.map(ParleyCore.Message.init), hasMore: page.hasMore_p)
    }
}

extension PresenceEntry {
    init(_ presence: Chat_V1_Presence) {
        self.init(user: presence.userID, since: Timestamp(presence.since))
    }
}

extension ICEServer {
    init(_ server: Chat_V1_IceServer) {
        self.init(urls: server.urls, username: server.hasUsername ? server.username : nil, credential: server.hasCredential ? server.credential : nil)
    }
}

extension Timestamp {
    init(_ timestamp: Google_Protobuf_Timestamp) {
        self.init(milliseconds: timestamp.seconds * 1000 + Int64(timestamp.nanos / 1_000_000))
    }
}

extension ParleyCore.Message {
    init(_ message: Chat_V1_ChatMessage) {
        self.init(
            id: message.id, room: message.roomID, seq: message.seq, user: message.senderID, content: message.content,
            timestamp: Timestamp(message.timestamp), clientId: message.hasClientID ? message.clientID : nil,
            kind: message.kind.kind ?? .message, target: message.targetID.isEmpty ? nil : message.targetID,
            replyTo: message.hasReplyTo ? message.replyTo : nil
        )
        if message.hasUntil { until = Timestamp(message.until) }
        if message.hasEdited { edited = Timestamp(message.edited) }
        deleted = message.deleted
        reactions = message.reactions.map { Reaction(emoji: $0.emoji, users: $0.userIds) }
        if message.hasQuote {
            var quoted = ParleyCore.Message(
                id: message.quote.id, room: message.roomID, seq: 0, user: message.quote.senderID, content: message.quote.content,
                timestamp: Timestamp(milliseconds: 0), clientId: nil
            )
            quoted.deleted = message.quote.deleted
            quote = Quote(of: quoted)
        }
        attachments = message.attachments.map { attachment in
            Attachment(
                id: attachment.id, room: attachment.roomID, user: message.senderID, name: attachment.name, type: attachment.type,
                size: attachment.size, width: attachment.hasWidth ? Int(attachment.width) : nil,
                height: attachment.hasHeight ? Int(attachment.height) : nil,
                duration: attachment.hasDurationMs ? Int(attachment.durationMs) : nil, digest: "", created: Timestamp(milliseconds: 0)
            )
        }
    }
}
