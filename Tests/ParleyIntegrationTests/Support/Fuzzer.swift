import Foundation

/// A small, fast, seeded generator (SplitMix64): the same seed gives the same inputs.
struct SeededRandom: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) {
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func chance(_ probability: Double) -> Bool { Double.random(in: 0..<1, using: &self) < probability }
    mutating func pick<T>(_ values: [T]) -> T { values[Int.random(in: 0..<values.count, using: &self)] }
}

/// Mutations of valid inputs and random inputs, for everything Parley parses.
struct Mutator {
    var random: SeededRandom

    /// Strings that have broken parsers before: empty, huge, control, non-ASCII, numbers at
    /// the edges, JSON fragments, path tricks.
    static let nasty: [String] = [
        "", " ", "\u{0}", "\u{1}\u{7f}", "\\", "\"", "\\u0000", "\\ud800", "😀", "é", "\u{202e}", "\u{feff}", "null", "true",
        "-1", "0", "1.5", "1e400", "-0", "9223372036854775807", "9223372036854775808", "-9223372036854775809",
        "NaN", "Infinity", "[]", "{}", "[[[[[[[[[[", "{\"a\":", "../../etc/passwd", "%00", "%2F", "%", "*", "a*",
        String(repeating: "a", count: 65), String(repeating: "x", count: 4001), String(repeating: "[", count: 600),
    ]

    /// A random JSON value, nested at most `depth` deep.
    mutating func jsonValue(depth: Int = 2) -> Any {
        switch Int.random(in: 0..<(depth > 0 ? 9 : 7), using: &random) {
        case 0: return NSNull()
        case 1: return random.chance(0.5)
        case 2: return Int64.random(in: Int64.min...Int64.max, using: &random)
        case 3: return random.pick([-1, 0, 1, 2, 50, 100, 101, Int.max])
        case 4: return Double.random(in: -1e6...1e6, using: &random)
        case 5: return random.pick(Self.nasty)
        case 6: return randomText(maxLength: 40)
        case 7: return (0..<Int.random(in: 0..<4, using: &random)).map { _ in jsonValue(depth: depth - 1) }
        default:
            var object: [String: Any] = [:]
            for _ in 0..<Int.random(in: 0..<4, using: &random) {
                object[random.pick(["room", "content", "id", "since", "seq", "token", "user", "x"])] = jsonValue(depth: depth - 1)
            }
            return object
        }
    }

    mutating func randomText(maxLength: Int) -> String {
        let alphabet = Array("abcXYZ019 _.:-*/?&=%#\"\\{}[],\u{0}\u{1f}é😀\n\t")
        return String((0..<Int.random(in: 0...maxLength, using: &random)).map { _ in random.pick(alphabet) })
    }

    /// A byte-level mutation of `text`: flips, deletions, insertions, duplications,
    /// truncations, splices of nasty strings.
    mutating func mutate(_ text: String) -> String {
        var bytes = Array(text.utf8)
        for _ in 0..<Int.random(in: 1...3, using: &random) {
            let position = bytes.isEmpty ? 0 : Int.random(in: 0..<bytes.count, using: &random)
            switch Int.random(in: 0..<7, using: &random) {
            case 0 where !bytes.isEmpty: bytes[position] ^= UInt8(1 << Int.random(in: 0..<7, using: &random))
            case 1 where !bytes.isEmpty:
                bytes.removeSubrange(position..<min(bytes.count, position + Int.random(in: 1...8, using: &random)))
            case 2: bytes.insert(contentsOf: Array(random.pick(Self.nasty).utf8), at: position)
            case 3: bytes.insert(random.pick(Array("{}[]\":,\\0-e.".utf8)), at: position)
            case 4: bytes = Array(bytes[..<position])
            case 5 where !bytes.isEmpty:
                let end = min(bytes.count, position + Int.random(in: 1...16, using: &random))
                bytes.insert(contentsOf: bytes[position..<end], at: position)
            default: bytes.insert(UInt8.random(in: 0x20...0x7e, using: &random), at: position)
            }
        }
        // WebSocket text frames and HTTP fields carry valid UTF-8: repair what the flips broke.
        return String(decoding: bytes, as: UTF8.self)
    }
}
