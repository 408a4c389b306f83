/// The id a client put on a frame, echoed on its ack or error.
enum FrameID: Sendable, Hashable, Decodable {
    case number(Int64)
    case string(String)

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let number = try? container.decode(Int64.self) {
            self = .number(number)
        } else {
            self = .string(try container.decode(String.self))
        }
    }
}
