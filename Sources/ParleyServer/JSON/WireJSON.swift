import NIOCore
import ParleyCore

/// The JSON shapes of PROTOCOL.md, shared by the WebSocket, SSE and HTTP transports.
enum WireJSON {
    static func message(_ message: Message, into json: inout JSONWriter) {
        json.object { json in
            json.key("id"); json.string(message.id)
            json.key("room"); json.string(message.room)
            json.key("seq"); json.number(message.seq)
            json.key("user"); json.string(message.user)
            json.key("content"); json.string(message.content)
            json.key("timestamp"); json.string(message.timestamp.rfc3339)
            if let clientId = message.clientId {
                json.key("clientId"); json.string(clientId)
            }
            if message.kind != .message {
                json.key("kind"); json.string(message.kind.rawValue)
                if let target = message.target {
                    json.key("target"); json.string(target)
                }
                if let until = message.until {
                    json.key("until"); json.string(until.rfc3339)
                }
                return
            }
            if let replyTo = message.replyTo {
                json.key("replyTo"); json.string(replyTo)
                if let quote = message.quote {
                    json.key("quote")
                    json.object { json in
                        json.key("id"); json.string(quote.id)
                        json.key("user"); json.string(quote.user)
                        json.key("content"); json.string(quote.content)
                        if quote.deleted { json.key("deleted"); json.bool(true) }
                    }
                }
            }
            if let edited = message.edited {
                json.key("edited"); json.string(edited.rfc3339)
            }
            if message.deleted {
                json.key("deleted"); json.bool(true)
            }
            if !message.reactions.isEmpty {
                json.key("reactions")
                json.array(message.reactions) { json, reaction in
                    json.object { json in
                        json.key("emoji"); json.string(reaction.emoji)
                        json.key("users"); json.array(reaction.users) { json, user in json.string(user) }
                    }
                }
            }
            if !message.attachments.isEmpty {
                json.key("attachments")
                json.array(message.attachments) { json, attachment in Self.attachment(attachment, into: &json) }
            }
            if !message.deleted {
                let mentions = Mentions.users(in: message.content, limits: Limits())
                if !mentions.isEmpty {
                    json.key("mentions"); json.array(mentions) { json, user in json.string(user) }
                }
            }
        }
    }

    /// `{"id", "name", "type", "size", "width"?, "height"?, "duration"?, "url"}`.
    static func attachment(_ attachment: Attachment, into json: inout JSONWriter) {
        json.object { json in
            json.key("id"); json.string(attachment.id)
            json.key("name"); json.string(attachment.name)
            json.key("type"); json.string(attachment.type)
            json.key("size"); json.number(attachment.size)
            if let width = attachment.width, let height = attachment.height {
                json.key("width"); json.number(width)
                json.key("height"); json.number(height)
            }
            if let duration = attachment.duration {
                json.key("duration"); json.number(duration)
            }
            json.key("url"); json.string("/api/attachments/\(attachment.id)")
        }
    }

    /// The `data` object of a server event.
    static func eventData(_ event: ServerEvent, into json: inout JSONWriter) {
        switch event {
        case .message(let message):
            Self.message(message, into: &json)
        case .join(let room, let user, let timestamp), .leave(let room, let user, let timestamp):
            json.object { json in
                json.key("room"); json.string(room)
                json.key("user"); json.string(user)
                json.key("timestamp"); json.string(timestamp.rfc3339)
            }
        case .typing(let room, let user, let typing):
            json.object { json in
                json.key("room"); json.string(room)
                json.key("user"); json.string(user)
                json.key("typing"); json.bool(typing)
            }
        case .read(let room, let user, let seq), .ownRead(let user, let room, let seq):
            json.object { json in
                json.key("room"); json.string(room)
                json.key("user"); json.string(user)
                json.key("seq"); json.number(seq)
            }
        case .presence(let room, let online, let joined, let left):
            json.object { json in
                json.key("room"); json.string(room)
                json.key("online"); json.number(online)
                json.key("joined"); json.array(joined) { json, user in json.string(user) }
                json.key("left"); json.array(left) { json, user in json.string(user) }
            }
        case .call(let signal):
            json.object { json in
                json.key("call"); json.string(signal.call)
                json.key("type"); json.string(signal.kind.rawValue)
                json.key("from"); json.string(signal.from)
                json.key("fromSession"); json.string(signal.fromSession)
                json.key("video"); json.bool(signal.video)
                if let data = signal.data {
                    json.key("data"); json.string(data)
                }
                if !signal.iceServers.isEmpty {
                    json.key("iceServers"); Self.iceServers(signal.iceServers, into: &json)
                }
            }
        case .notify(_, let kind, let message):
            json.object { json in
                json.key("kind"); json.string(kind.rawValue)
                json.key("room"); json.string(message.room)
                json.key("message"); Self.message(message, into: &json)
            }
        }
    }

    /// The `data` of a command's ack: the same object on every JSON wire.
    static func replyData(_ reply: Reply, into json: inout JSONWriter) {
        switch reply {
        case .connected(let user, let session):
            json.object { json in
                json.key("user"); json.string(user)
                json.key("session"); json.string(session)
            }
        case .joined(let joined):
            json.object { json in
                json.key("room"); json.string(joined.room)
                json.key("seq"); json.number(joined.seq)
                json.key("users"); WireJSON.users(joined.users, into: &json)
                WireJSON.pageFields(online: joined.online, hasMore: joined.hasMore, into: &json)
            }
        case .left(let room):
            json.object { json in json.key("room"); json.string(room) }
        case .published(let stored):
            WireJSON.message(stored.message, into: &json)
        case .changed(let message):
            WireJSON.message(message, into: &json)
        case .typing:
            json.object { _ in }
        case .read(let room, let seq):
            json.object { json in
                json.key("room"); json.string(room)
                json.key("seq"); json.number(seq)
            }
        case .history(let page):
            WireJSON.page(page, into: &json)
        case .presence(let page):
            WireJSON.presence(page, into: &json)
        case .searched(let page):
            WireJSON.page(page, into: &json)
        case .inbox(let entries):
            json.object { json in
                json.key("rooms")
                json.array(entries) { json, entry in Self.inboxEntry(entry, into: &json) }
            }
        case .callStarted(let start):
            json.object { json in
                json.key("call"); json.string(start.call)
                json.key("iceServers"); Self.iceServers(start.iceServers, into: &json)
            }
        case .signaled:
            json.object { _ in }
        case .visibility(let visible):
            json.object { json in json.key("visible"); json.bool(visible) }
        case .pong:
            json.object { _ in }
        }
    }

    /// `[{"urls": [...], "username"?, "credential"?}]`, as `RTCPeerConnection` takes them.
    static func iceServers(_ servers: [ICEServer], into json: inout JSONWriter) {
        json.array(servers) { json, server in
            json.object { json in
                json.key("urls"); json.array(server.urls) { json, url in json.string(url) }
                if let username = server.username, let credential = server.credential {
                    json.key("username"); json.string(username)
                    json.key("credential"); json.string(credential)
                }
            }
        }
    }

    /// One room of a user's list: `{"room", "seq", "read", "unread", "mentions", "lastMessage"?}`.
    static func inboxEntry(_ entry: InboxEntry, into json: inout JSONWriter) {
        json.object { json in
            json.key("room"); json.string(entry.room)
            json.key("seq"); json.number(entry.seq)
            json.key("read"); json.number(entry.readSeq)
            json.key("unread"); json.number(entry.unread)
            json.key("mentions"); json.number(entry.mentions)
            if let last = entry.lastMessage {
                json.key("lastMessage"); message(last, into: &json)
            }
        }
    }

    /// `{"room", "users", ...}` of a `presence` answer (HTTP and WebSocket).
    static func presence(_ page: Engine.PresencePage, into json: inout JSONWriter) {
        json.object { json in
            json.key("room"); json.string(page.room)
            json.key("users"); users(page.users, into: &json)
            pageFields(online: page.online, hasMore: page.hasMore, into: &json)
        }
    }

    /// A paged presence list says how many users there are and that more follow; a list that
    /// fits one page looks exactly as it always did.
    static func pageFields(online: Int, hasMore: Bool, into json: inout JSONWriter) {
        guard hasMore else { return }
        json.key("online"); json.number(online)
        json.key("hasMore"); json.bool(true)
    }

    static func eventName(_ event: ServerEvent) -> StaticString {
        switch event {
        case .message: "message"
        case .join: "join"
        case .leave: "leave"
        case .typing: "typing"
        case .read, .ownRead: "read"
        case .presence: "presence"
        case .notify: "notify"
        case .call: "call"
        }
    }

    /// `{"error": {...}}`: the body of every HTTP error answer.
    static func errorBody(_ error: ParleyError) -> ByteBuffer {
        var json = JSONWriter()
        json.object { json in
            json.key("error")
            Self.error(error, into: &json)
        }
        return json.buffer
    }

    static func error(_ error: ParleyError, into json: inout JSONWriter) {
        json.object { json in
            json.key("code"); json.string(error.code.name)
            json.key("message"); json.string(error.message)
            if let retryAfterMs = error.retryAfterMs {
                json.key("retryAfterMs"); json.number(retryAfterMs)
            }
        }
    }

    static func page(_ page: HistoryPage, into json: inout JSONWriter) {
        json.object { json in
            json.key("messages")
            json.array(page.messages) { json, message in Self.message(message, into: &json) }
            json.key("hasMore"); json.bool(page.hasMore)
        }
    }

    static func users(_ users: [PresenceEntry], into json: inout JSONWriter) {
        json.array(users) { json, entry in
            json.object { json in
                json.key("user"); json.string(entry.user)
                json.key("since"); json.string(entry.since.rfc3339)
            }
        }
    }
}
