import NIOCore
import ParleyCore

/// The Socket.IO wire format (socket.io-protocol v5 in Engine.IO v4 `message` packets): room
/// events are `42["message",{...}]`, acks `43<id>[{...}]`, the same data objects as the
/// WebSocket's. Each outbox frame is one Engine.IO packet's text, without transport framing
/// (a WebSocket frame header or a polling payload separator), which `SocketIOWriter` adds.
///
/// Three kinds of frames carry a small binary prefix, read and removed by `SocketIOWriter`,
/// so that the writer can follow the connection's position in each room for connection state
/// recovery: a `message` event (its room and seq; the writer closes the packet with the
/// recovery offset as the last argument), a `join` ack (the room and its seq) and a `leave`
/// ack. A room event is still encoded once for every Socket.IO session.
final class SocketIOFrames: WireFormat {
    static let shared = SocketIOFrames()

    enum Marker: UInt8 {
        case message = 0
        case joined = 1
        case left = 2
    }

    func encode(_ event: ServerEvent) -> ByteBuffer {
        var json = JSONWriter(capacity: 256)
        if case .message(let message) = event {
            Self.writeMarker(.message, room: message.room, seq: message.seq, into: &json.buffer)
            json.literal("42[\"message\",")
            WireJSON.message(message, into: &json)
            // Closed by the writer: `,"<offset>"]`.
            return json.buffer
        }
        json.literal("42[")
        json.string(WireJSON.eventName(event).description)
        WireJSON.eventData(event, into: &json)
        json.literal("]")
        return json.buffer
    }

    /// An ack (`43<id>[data]`) when the client asked for one; a `join` or `leave` ack is also
    /// sent without an id, as a bare marker, for the writer's positions.
    func encode(_ reply: Reply, id: RequestID?) -> ByteBuffer? {
        var json = JSONWriter(capacity: 128)
        switch reply {
        case .joined(let joined): Self.writeMarker(.joined, room: joined.room, seq: joined.seq, into: &json.buffer)
        case .left(let room): Self.writeMarker(.left, room: room, seq: 0, into: &json.buffer)
        default: guard id != nil else { return nil }
        }
        if let id {
            Self.ackPrefix(id, into: &json)
            WireJSON.replyData(reply, into: &json)
            json.literal("]")
        }
        return json.buffer
    }

    /// With an ack id, an ack whose one argument is `{"error": {"code", "message"}}`; without
    /// one, an `error` event.
    func encode(_ error: ParleyError, id: RequestID?) -> ByteBuffer {
        var json = JSONWriter(capacity: 128)
        if let id {
            Self.ackPrefix(id, into: &json)
            json.object { json in
                json.key("error"); WireJSON.error(error, into: &json)
            }
        } else {
            json.literal("42[")
            json.string("error")
            WireJSON.error(error, into: &json)
        }
        json.literal("]")
        return json.buffer
    }

    private static func ackPrefix(_ id: RequestID, into json: inout JSONWriter) {
        json.literal("43")
        // Socket.IO ack ids are integers; the decoder never makes another kind.
        if case .number(let number) = id { json.buffer.writeString(String(number)) }
        json.literal("[")
    }

    private static func writeMarker(_ marker: Marker, room: String, seq: Int64, into buffer: inout ByteBuffer) {
        buffer.writeInteger(marker.rawValue)
        buffer.writeInteger(seq)
        buffer.writeInteger(UInt16(room.utf8.count))
        buffer.writeString(room)
    }

    /// Reads a frame's marker, if it has one, leaving the packet text readable.
    static func readMarker(_ buffer: inout ByteBuffer) -> (Marker, room: String, seq: Int64)? {
        guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self), let marker = Marker(rawValue: first) else { return nil }
        buffer.moveReaderIndex(forwardBy: 1)
        guard let seq = buffer.readInteger(as: Int64.self), let length = buffer.readInteger(as: UInt16.self),
            let room = buffer.readString(length: Int(length))
        else { return nil }
        return (marker, room, seq)
    }

    // MARK: Fixed packets

    /// Engine.IO `ping`, `pong probe`, `noop` and `close` packets.
    static let ping = ByteBuffer(string: "2")
    static let pongProbe = ByteBuffer(string: "3probe")
    static let noop = ByteBuffer(string: "6")
    static let close = ByteBuffer(string: "1")
    /// Socket.IO `DISCONNECT` of the main namespace.
    static let disconnect = ByteBuffer(string: "41")

    /// The Engine.IO `open` packet of a new session.
    static func open(sid: String, upgrades: [String], pingInterval: Duration, pingTimeout: Duration, maxPayload: Int) -> ByteBuffer {
        var json = JSONWriter(capacity: 160)
        json.literal("0")
        json.object { json in
            json.key("sid"); json.string(sid)
            json.key("upgrades"); json.array(upgrades) { json, upgrade in json.string(upgrade) }
            json.key("pingInterval"); json.number(pingInterval.milliseconds)
            json.key("pingTimeout"); json.number(pingTimeout.milliseconds)
            json.key("maxPayload"); json.number(maxPayload)
        }
        return json.buffer
    }

    /// Socket.IO `CONNECT` answering the main namespace's: the socket id and the recovery id.
    static func connected(sid: String, pid: String) -> ByteBuffer {
        var json = JSONWriter(capacity: 96)
        json.literal("40")
        json.object { json in
            json.key("sid"); json.string(sid)
            json.key("pid"); json.string(pid)
        }
        return json.buffer
    }

    /// Socket.IO `CONNECT_ERROR` for `namespace`: `{"message", "data": {"code"}}`, what
    /// socket.io-client hands to `connect_error` as `err.message` and `err.data`.
    static func connectError(namespace: String, _ error: ParleyError) -> ByteBuffer {
        var json = JSONWriter(capacity: 128)
        json.literal("44")
        if namespace != "/" {
            json.buffer.writeString(namespace)
            json.literal(",")
        }
        json.object { json in
            json.key("message"); json.string(error.message)
            json.key("data"); json.object { json in json.key("code"); json.string(error.code.name) }
        }
        return json.buffer
    }

    /// The event that carries only the recovery offset, sent after a join or a leave changed
    /// the connection's rooms (socket.io-client keeps the last string argument of any event).
    static func offsetEvent(_ offset: String) -> ByteBuffer {
        var json = JSONWriter(capacity: 32 + offset.utf8.count)
        json.literal("42[")
        json.string(SocketIOWriter.offsetEventName)
        json.string(offset)
        json.literal("]")
        return json.buffer
    }
}

/// Turns one Socket.IO session's outbox frames into Engine.IO packets, following its position
/// in each room: the recovery offset (`room=seq,room=seq`, the last seq the client was sent in
/// each room it is in) closes every `message` event, so the offset socket.io-client sends back
/// on reconnect says exactly where to resume every room. Used by one writer at a time.
struct SocketIOWriter {
    static let offsetEventName = "parley:offset"

    /// The connection's rooms and the last seq written in each.
    private(set) var positions: [String: Int64] = [:]
    /// The rooms in offset order, kept while they do not change.
    private var rooms: [String] = []
    /// `since` of the joins in flight, by room: the replay that follows their ack starts there.
    var pendingSince: [String: Int64] = [:]

    var offset: String {
        var buffer = ByteBuffer()
        writeOffset(into: &buffer)
        return String(buffer: buffer)
    }

    /// `room=seq,room=seq`, written straight into `buffer` (no string per delivery).
    private func writeOffset(into buffer: inout ByteBuffer) {
        for (index, room) in rooms.enumerated() {
            if index > 0 { buffer.writeInteger(UInt8(ascii: ",")) }
            buffer.writeString(room)
            buffer.writeInteger(UInt8(ascii: "="))
            Self.writeDecimal(positions[room] ?? 0, into: &buffer)
        }
    }

    private static func writeDecimal(_ value: Int64, into buffer: inout ByteBuffer) {
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var value = UInt64(max(0, value))
        var count = 0
        withUnsafeMutableBytes(of: &digits) { bytes in
            repeat {
                bytes[19 - count] = UInt8(ascii: "0") + UInt8(value % 10)
                value /= 10
                count += 1
            } while value > 0
            buffer.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[(20 - count)...]))
        }
    }

    private static func newPacket(capacity: Int, headroom: Int) -> ByteBuffer {
        var packet = ByteBufferAllocator().buffer(capacity: headroom + capacity)
        packet.moveWriterIndex(forwardBy: headroom)
        return packet
    }

    /// `packet` with `headroom` free bytes in front (readable: the reader index is at the free
    /// space), for a WebSocket frame header written in place; as it is for none.
    static func withHeadroom(_ packet: ByteBuffer, _ headroom: Int) -> ByteBuffer {
        guard headroom > 0 else { return packet }
        var packet = packet
        var copy = newPacket(capacity: packet.readableBytes, headroom: headroom)
        copy.writeBuffer(&packet)
        return copy
    }

    private mutating func setRooms() {
        rooms = positions.keys.sorted()
    }

    /// The packets to send for `frame`, in order (none for a bare marker), each with
    /// `headroom` free bytes in front (`withHeadroom`). A `message` packet is built once per
    /// recipient with its offset: one allocation, the frame header written in place later.
    mutating func packets(_ frame: ByteBuffer, into packets: inout [ByteBuffer], headroom: Int = 0) {
        var frame = frame
        func copy(_ frame: ByteBuffer) -> ByteBuffer { Self.withHeadroom(frame, headroom) }
        guard let (marker, room, seq) = SocketIOFrames.readMarker(&frame) else {
            packets.append(copy(frame))
            return
        }
        switch marker {
        case .message:
            if positions[room] == nil {
                positions[room] = seq
                setRooms()
            } else {
                positions[room] = max(positions[room] ?? 0, seq)
            }
            var packet = Self.newPacket(capacity: frame.readableBytes + rooms.count * 24 + 4, headroom: headroom)
            packet.writeBuffer(&frame)
            packet.writeStaticString(",\"")
            writeOffset(into: &packet)
            packet.writeStaticString("\"]")
            packets.append(packet)
        case .joined:
            let since = pendingSince.removeValue(forKey: room)
            if positions[room] == nil {
                positions[room] = min(since ?? seq, seq)
                setRooms()
            }
            if frame.readableBytes > 0 { packets.append(copy(frame)) }
            packets.append(copy(SocketIOFrames.offsetEvent(offset)))
        case .left:
            positions[room] = nil
            setRooms()
            if frame.readableBytes > 0 { packets.append(copy(frame)) }
            packets.append(copy(SocketIOFrames.offsetEvent(offset)))
        }
    }

    /// Parses an offset sent back for recovery: at most `maxRooms` valid rooms with their seqs.
    static func parseOffset(_ offset: String, limits: Limits) -> [String: Int64]? {
        if offset.isEmpty { return [:] }
        var positions: [String: Int64] = [:]
        for pair in offset.split(separator: ",", omittingEmptySubsequences: false) {
            let parts = pair.split(separator: "=", omittingEmptySubsequences: false)
            guard parts.count == 2, let seq = Int64(parts[1]), seq >= 0,
                Validation.isValidRoom(String(parts[0]), limits: limits), positions[String(parts[0])] == nil
            else { return nil }
            positions[String(parts[0])] = seq
        }
        guard positions.count <= limits.maxRoomsPerConnection else { return nil }
        return positions
    }
}
