import Foundation
import NIOCore
import ParleyCore

/// A packet a client sent, as Engine.IO v4 frames it (engine.io-protocol).
enum EngineIOPacket: Equatable {
    case close
    case ping(String)
    case pong(String)
    case message(Substring)
    case upgrade
    case noop

    /// One text packet: its type digit, then its data.
    init?(_ text: Substring) {
        guard let type = text.first else { return nil }
        let data = text.dropFirst()
        switch type {
        case "1": self = .close
        case "2": self = .ping(String(data))
        case "3": self = .pong(String(data))
        case "4": self = .message(data)
        case "5": self = .upgrade
        case "6": self = .noop
        default: return nil
        }
    }

    /// The packets of a polling request body, separated by the record separator (0x1E).
    /// A binary packet (`b` + base64) is returned as `.binary`.
    enum Payload: Equatable {
        case text(EngineIOPacket)
        case binary(Data)
    }

    static func payload(_ body: String) -> [Payload]? {
        var packets: [Payload] = []
        for part in body.split(separator: "\u{1E}", omittingEmptySubsequences: false) {
            if part.first == "b" {
                guard let bytes = Data(base64Encoded: String(part.dropFirst())) else { return nil }
                packets.append(.binary(bytes))
            } else {
                guard let packet = EngineIOPacket(part) else { return nil }
                packets.append(.text(packet))
            }
        }
        return packets
    }
}

/// A Socket.IO packet (socket.io-protocol v5) as socket.io-parser encodes it:
/// `<type>[<attachments>-][<namespace>,][<ack id>][JSON payload]`.
struct SocketIOPacket {
    enum Kind: Int {
        case connect = 0
        case disconnect = 1
        case event = 2
        case ack = 3
        case connectError = 4
        case binaryEvent = 5
        case binaryAck = 6
    }

    var kind: Kind
    var attachments = 0
    var namespace = "/"
    var id: Int64?
    /// The parsed JSON payload, nil when there is none.
    var payload: Any?

    struct Invalid: Error {
        var reason: String
    }

    /// Parses one packet, checking its payload as the protocol requires: CONNECT carries an
    /// object or nothing, DISCONNECT nothing, EVENT a non-empty array whose first element is
    /// the event name, ACK an array.
    init(_ text: Substring) throws(Invalid) {
        var rest = text
        guard let digit = rest.first?.wholeNumberValue, let kind = Kind(rawValue: digit) else {
            throw Invalid(reason: "unknown packet type")
        }
        self.kind = kind
        rest = rest.dropFirst()
        if kind == .binaryEvent || kind == .binaryAck {
            guard let dash = rest.firstIndex(of: "-"), let count = Int(rest[..<dash]), count >= 0, count <= 10 else {
                throw Invalid(reason: "invalid attachment count")
            }
            attachments = count
            rest = rest[rest.index(after: dash)...]
        }
        if rest.first == "/" {
            let end = rest.firstIndex(of: ",") ?? rest.endIndex
            namespace = String(rest[..<end])
            rest = end == rest.endIndex ? rest[end...] : rest[rest.index(after: end)...]
        }
        let digits = rest.prefix { $0.isASCII && $0.isNumber }
        if !digits.isEmpty {
            guard digits.count <= 15, let id = Int64(digits) else { throw Invalid(reason: "invalid ack id") }
            self.id = id
            rest = rest.dropFirst(digits.count)
        }
        if !rest.isEmpty {
            guard let payload = try? JSONSerialization.jsonObject(with: Data(rest.utf8), options: [.fragmentsAllowed]) else {
                throw Invalid(reason: "payload is not valid JSON")
            }
            self.payload = payload
        }
        switch kind {
        case .connect:
            guard payload == nil || payload is [String: Any] else { throw Invalid(reason: "CONNECT payload must be an object") }
        case .disconnect:
            guard payload == nil else { throw Invalid(reason: "DISCONNECT carries no payload") }
        case .event, .binaryEvent:
            guard let array = payload as? [Any], let first = array.first, first is String else {
                throw Invalid(reason: "EVENT payload must be an array starting with the event name")
            }
        case .ack, .binaryAck:
            guard payload is [Any] else { throw Invalid(reason: "ACK payload must be an array") }
        case .connectError:
            throw Invalid(reason: "CONNECT_ERROR is sent by servers only")
        }
    }

    /// The event's name and arguments.
    var event: (name: String, arguments: [Any])? {
        guard let array = payload as? [Any], let name = array.first as? String else { return nil }
        return (name, Array(array.dropFirst()))
    }
}
