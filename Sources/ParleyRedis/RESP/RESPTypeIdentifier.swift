/// The first byte of every RESP2 and RESP3 value.
enum RESPTypeIdentifier: UInt8, Sendable {
    case simpleString = 0x2B  // +
    case simpleError = 0x2D  // -
    case integer = 0x3A  // :
    case bulkString = 0x24  // $
    case array = 0x2A  // *
    case null = 0x5F  // _
    case boolean = 0x23  // #
    case double = 0x2C  // ,
    case bigNumber = 0x28  // (
    case bulkError = 0x21  // !
    case verbatimString = 0x3D  // =
    case map = 0x25  // %
    case set = 0x7E  // ~
    case push = 0x3E  // >
    case attribute = 0x7C  // |

    /// Aggregates hold this many values per counted element (maps and attributes hold pairs).
    var valuesPerElement: Int? {
        switch self {
        case .array, .set, .push: 1
        case .map, .attribute: 2
        default: nil
        }
    }
}
