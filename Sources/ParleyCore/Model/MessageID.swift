import Synchronization

/// ULID generator: 48 bits of milliseconds then 80 bits that increase monotonically within a
/// millisecond, so ids sort in creation order within one process.
public enum MessageID {
    private static let alphabet = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ".utf8)
    private static let state = Mutex<(ms: Int64, high: UInt16, low: UInt64)>((0, 0, 0))

    public static func next(at timestamp: Timestamp = .now) -> String {
        let (ms, high, low) = state.withLock { state -> (Int64, UInt16, UInt64) in
            if timestamp.milliseconds > state.ms {
                var rng = SystemRandomNumberGenerator()
                state = (timestamp.milliseconds, UInt16.random(in: 0...UInt16.max, using: &rng) & 0x7FFF, rng.next())
            } else {
                let (low, overflow) = state.low.addingReportingOverflow(1)
                state.low = low
                if overflow { state.high &+= 1 }
            }
            return state
        }
        return encode(ms: UInt64(ms), high: high, low: low)
    }

    static func encode(ms: UInt64, high: UInt16, low: UInt64) -> String {
        var out = [UInt8](repeating: 0, count: 26)
        // 10 characters of time (50 bits, top 2 are zero), 16 characters of randomness (80 bits).
        var time = ms
        for index in stride(from: 9, through: 0, by: -1) {
            out[index] = alphabet[Int(time & 31)]
            time >>= 5
        }
        var random = low
        for index in stride(from: 25, through: 13, by: -1) {
            out[index] = alphabet[Int(random & 31)]
            random >>= 5
        }
        // 13 characters used 65 bits; the top bit of `low` remains, joined with `high`.
        var rest = UInt32(high) << 1 | UInt32(random & 1)
        for index in stride(from: 12, through: 10, by: -1) {
            out[index] = alphabet[Int(rest & 31)]
            rest >>= 5
        }
        return String(decoding: out, as: UTF8.self)
    }
}
