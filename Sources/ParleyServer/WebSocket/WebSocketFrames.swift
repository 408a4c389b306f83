import NIOCore
import ParleyCore

extension FrameID {
    func write(into json: inout JSONWriter) {
        switch self {
        case .number(let number): json.number(number)
        case .string(let string): json.string(string)
        }
    }
}

/// Encodes server frames: `{"event": NAME, "data": {...}}`, plus `id` on replies.
final class WebSocketFrames: EventEncoder {
    static let shared = WebSocketFrames()

    func encode(_ event: ServerEvent) -> ByteBuffer {
        frame(WireJSON.eventName(event), id: nil) { WireJSON.eventData(event, into: &$0) }
    }

    func frame(_ event: StaticString, id: FrameID?, data: (inout JSONWriter) -> Void) -> ByteBuffer {
        var json = JSONWriter()
        json.object { json in
            json.key("event"); json.string(event.description)
            if let id {
                json.key("id"); id.write(into: &json)
            }
            json.key("data"); data(&json)
        }
        return json.buffer
    }

    func ack(_ id: FrameID?, data: (inout JSONWriter) -> Void) -> ByteBuffer {
        frame("ack", id: id, data: data)
    }

    func error(_ error: ParleyError, id: FrameID?) -> ByteBuffer {
        frame("error", id: id) { WireJSON.error(error, into: &$0) }
    }

    func pong(_ id: FrameID?) -> ByteBuffer {
        frame("pong", id: id) { $0.object { _ in } }
    }
}
