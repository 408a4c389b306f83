import NIOCore
import ParleyCore

/// The compact binary form of a `ServerEvent` on Redis pub/sub.
///
/// Layout (version 1): one version byte (1), one kind byte, then the fields in order.
/// Strings are a big-endian `UInt32` byte count and UTF-8; integers are big-endian `Int64`.
/// - 1 message: id, room, seq, user, content, timestamp (ms), a flags byte, then [clientId]
///   if flag 1, [kind byte and target] if flag 2 (a change), [replyTo, has-quote byte,
///   [quote id, user, content, deleted byte]] if flag 4 (a reply), [until (ms)] if flag 8,
///   [count byte, then per attachment: id, name, type, size, width, height, duration (-1: none),
///   digest] if flag 16
/// - 2 join / 3 leave: room, user, timestamp (ms)
/// - 4 typing: room, user, typing byte
/// - 5 read: room, user, seq
/// - 6 presence: room, online, joined count and users, left count and users
/// - 7 notify: user, kind (`dm` or `mention`), then the message's fields as in 1
/// - 8 own read: user, room, seq
/// - 9 call signal: call, kind, from, from session, to, flags byte (1 to session, 2 except
///   session, 4 data, 8 video), [to session], [except session], [data], ICE server count and
///   per server: url count, urls, username ("" for none), credential
///
/// Chosen over JSON because it is encoded once per publish and decoded once per receiving
/// instance with no allocation beyond the strings, and is about a third smaller for short
/// messages; see docs/architecture.md for the measurement.
public enum BrokerCodec {
    static let version: UInt8 = 1

    public static func encode(_ event: ServerEvent) -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        buffer.writeInteger(version)
        switch event {
        case .message(let message):
            buffer.writeInteger(UInt8(1))
            buffer.writeMessage(message)
        case .notify(let user, let kind, let message):
            buffer.writeInteger(UInt8(7))
            buffer.writeField(user)
            buffer.writeField(kind.rawValue)
            buffer.writeMessage(message)
        case .join(let room, let user, let timestamp), .leave(let room, let user, let timestamp):
            if case .join = event { buffer.writeInteger(UInt8(2)) } else { buffer.writeInteger(UInt8(3)) }
            buffer.writeField(room)
            buffer.writeField(user)
            buffer.writeInteger(timestamp.milliseconds)
        case .typing(let room, let user, let typing):
            buffer.writeInteger(UInt8(4))
            buffer.writeField(room)
            buffer.writeField(user)
            buffer.writeInteger(UInt8(typing ? 1 : 0))
        case .call(let signal):
            buffer.writeInteger(UInt8(9))
            for field in [signal.call, signal.kind.rawValue, signal.from, signal.fromSession, signal.to] { buffer.writeField(field) }
            let flags: UInt8 = (signal.toSession == nil ? 0 : 1) | (signal.exceptSession == nil ? 0 : 2) | (signal.data == nil ? 0 : 4) | (signal.video ? 8 : 0)
            buffer.writeInteger(flags)
            for field in [signal.toSession, signal.exceptSession, signal.data].compactMap({ $0 }) { buffer.writeField(field) }
            buffer.writeInteger(UInt8(signal.iceServers.count))
            for server in signal.iceServers {
                buffer.writeInteger(UInt8(server.urls.count))
                for url in server.urls { buffer.writeField(url) }
                buffer.writeField(server.username ?? "")
                buffer.writeField(server.credential ?? "")
            }
        case .ownRead(let user, let room, let seq):
            buffer.writeInteger(UInt8(8))
            buffer.writeField(user)
            buffer.writeField(room)
            buffer.writeInteger(seq)
        case .read(let room, let user, let seq):
            buffer.writeInteger(UInt8(5))
            buffer.writeField(room)
            buffer.writeField(user)
            buffer.writeInteger(seq)
        case .presence(let room, let online, let joined, let left):
            buffer.writeInteger(UInt8(6))
            buffer.writeField(room)
            buffer.writeInteger(Int64(online))
            for users in [joined, left] {
                buffer.writeInteger(UInt32(users.count))
                for user in users { buffer.writeField(user) }
            }
        }
        return buffer
    }

    /// The event, or nil for bytes that are not a version-1 event.
    public static func decode(_ bytes: ByteBuffer) -> ServerEvent? {
        var buffer = bytes
        guard buffer.readInteger(as: UInt8.self) == version, let kind = buffer.readInteger(as: UInt8.self) else { return nil }
        let event: ServerEvent?
        switch kind {
        case 1:
            guard let message = buffer.readMessage() else { return nil }
            event = .message(message)
        case 8:
            guard let user = buffer.readField(), let room = buffer.readField(), let seq = buffer.readInteger(as: Int64.self) else { return nil }
            event = .ownRead(user: user, room: room, seq: seq)
        case 9:
            guard let call = buffer.readField(), let kind = buffer.readField().flatMap(CallSignal.Kind.init(rawValue:)),
                let from = buffer.readField(), let fromSession = buffer.readField(), let to = buffer.readField(),
                let flags = buffer.readInteger(as: UInt8.self)
            else { return nil }
            var signal = CallSignal(call: call, kind: kind, from: from, fromSession: fromSession, to: to, video: flags & 8 != 0)
            if flags & 1 != 0 { guard let value = buffer.readField() else { return nil }; signal.toSession = value }
            if flags & 2 != 0 { guard let value = buffer.readField() else { return nil }; signal.exceptSession = value }
            if flags & 4 != 0 { guard let value = buffer.readField() else { return nil }; signal.data = value }
            guard let servers = buffer.readInteger(as: UInt8.self) else { return nil }
            for _ in 0..<servers {
                guard let count = buffer.readInteger(as: UInt8.self) else { return nil }
                var urls: [String] = []
                for _ in 0..<count {
                    guard let url = buffer.readField() else { return nil }
                    urls.append(url)
                }
                guard let username = buffer.readField(), let credential = buffer.readField() else { return nil }
                signal.iceServers.append(ICEServer(urls: urls, username: username.isEmpty ? nil : username, credential: credential.isEmpty ? nil : credential))
            }
            event = .call(signal)
        case 7:
            guard let user = buffer.readField(), let kind = buffer.readField().flatMap(NotificationKind.init(rawValue:)),
                let message = buffer.readMessage()
            else { return nil }
            event = .notify(user: user, kind: kind, message: message)
        case 2, 3:
            guard let room = buffer.readField(), let user = buffer.readField(), let ms = buffer.readInteger(as: Int64.self) else { return nil }
            event = kind == 2
                ? .join(room: room, user: user, timestamp: Timestamp(milliseconds: ms))
                : .leave(room: room, user: user, timestamp: Timestamp(milliseconds: ms))
        case 4:
            guard let room = buffer.readField(), let user = buffer.readField(), let typing = buffer.readInteger(as: UInt8.self) else { return nil }
            event = .typing(room: room, user: user, typing: typing == 1)
        case 5:
            guard let room = buffer.readField(), let user = buffer.readField(), let seq = buffer.readInteger(as: Int64.self) else { return nil }
            event = .read(room: room, user: user, seq: seq)
        case 6:
            guard let room = buffer.readField(), let online = buffer.readInteger(as: Int64.self) else { return nil }
            var lists: [[String]] = []
            for _ in 0..<2 {
                guard let count = buffer.readInteger(as: UInt32.self), count <= 10_000 else { return nil }
                var users: [String] = []
                for _ in 0..<count {
                    guard let user = buffer.readField() else { return nil }
                    users.append(user)
                }
                lists.append(users)
            }
            event = .presence(room: room, online: Int(online), joined: lists[0], left: lists[1])
        default:
            return nil
        }
        return buffer.readableBytes == 0 ? event : nil
    }
}

extension ByteBuffer {
    fileprivate mutating func writeMessage(_ message: Message) {
        writeField(message.id)
        writeField(message.room)
        writeInteger(message.seq)
        writeField(message.user)
        writeField(message.content)
        writeInteger(message.timestamp.milliseconds)
        let isChange = message.kind != .message
        let flags: UInt8 = (message.clientId == nil ? 0 : 1) | (isChange ? 2 : 0) | (message.replyTo == nil ? 0 : 4) | (message.until == nil ? 0 : 8)
            | (message.attachments.isEmpty ? 0 : 16)
        writeInteger(flags)
        if let clientId = message.clientId { writeField(clientId) }
        if isChange {
            writeInteger(Self.kindCodes.firstIndex(of: message.kind).map(UInt8.init) ?? 0)
            writeField(message.target ?? "")
        }
        if let replyTo = message.replyTo {
            writeField(replyTo)
            if let quote = message.quote {
                writeInteger(UInt8(1))
                writeField(quote.id)
                writeField(quote.user)
                writeField(quote.content)
                writeInteger(UInt8(quote.deleted ? 1 : 0))
            } else {
                writeInteger(UInt8(0))
            }
        }
        if let until = message.until { writeInteger(until.milliseconds) }
        if !message.attachments.isEmpty {
            writeInteger(UInt8(message.attachments.count))
            for attachment in message.attachments {
                writeField(attachment.id)
                writeField(attachment.name)
                writeField(attachment.type)
                writeInteger(attachment.size)
                for value in [attachment.width, attachment.height, attachment.duration] { writeInteger(Int64(value ?? -1)) }
                writeField(attachment.digest)
            }
        }
    }

    private static let kindCodes: [MessageKind] = [.message, .edit, .delete, .react, .unreact, .kick, .mute, .unmute, .ban, .unban]

    fileprivate mutating func readMessage() -> Message? {
        guard let id = readField(), let room = readField(), let seq = readInteger(as: Int64.self),
            let user = readField(), let content = readField(), let ms = readInteger(as: Int64.self),
            let flags = readInteger(as: UInt8.self), flags & ~31 == 0
        else { return nil }
        var message = Message(id: id, room: room, seq: seq, user: user, content: content, timestamp: Timestamp(milliseconds: ms), clientId: nil)
        if flags & 1 != 0 {
            guard let clientId = readField() else { return nil }
            message.clientId = clientId
        }
        if flags & 2 != 0 {
            guard let code = readInteger(as: UInt8.self), Int(code) < Self.kindCodes.count, let target = readField() else { return nil }
            message.kind = Self.kindCodes[Int(code)]
            message.target = target
        }
        if flags & 4 != 0 {
            guard let replyTo = readField(), let hasQuote = readInteger(as: UInt8.self) else { return nil }
            message.replyTo = replyTo
            if hasQuote == 1 {
                guard let quoteID = readField(), let quoteUser = readField(), let quoteContent = readField(),
                    let deleted = readInteger(as: UInt8.self)
                else { return nil }
                var answered = Message(id: quoteID, room: room, seq: 0, user: quoteUser, content: quoteContent, timestamp: message.timestamp, clientId: nil)
                answered.deleted = deleted == 1
                message.quote = Quote(of: answered)
            }
        }
        if flags & 8 != 0 {
            guard let until = readInteger(as: Int64.self) else { return nil }
            message.until = Timestamp(milliseconds: until)
        }
        if flags & 16 != 0 {
            guard let count = readInteger(as: UInt8.self) else { return nil }
            for _ in 0..<count {
                guard let id = readField(), let name = readField(), let type = readField(), let size = readInteger(as: Int64.self),
                    let width = readInteger(as: Int64.self), let height = readInteger(as: Int64.self),
                    let duration = readInteger(as: Int64.self), let digest = readField()
                else { return nil }
                let optional = { (value: Int64) in value < 0 ? nil : Int(value) }
                message.attachments.append(Attachment(
                    id: id, room: room, user: user, name: name, type: type, size: size, width: optional(width), height: optional(height),
                    duration: optional(duration), digest: digest, created: message.timestamp, message: message.id
                ))
            }
        }
        return message
    }

    fileprivate mutating func writeField(_ string: String) {
        let lengthIndex = writerIndex
        writeInteger(UInt32(0))
        let count = writeString(string)
        setInteger(UInt32(count), at: lengthIndex)
    }

    fileprivate mutating func readField() -> String? {
        guard let length = readInteger(as: UInt32.self) else { return nil }
        return readString(length: Int(length))
    }
}
