import Crypto

/// The configured backend API keys, kept as SHA-256 digests and compared in constant time:
/// the time an answer takes says nothing about how much of a guess was right.
public struct APIKeys: Sendable {
    private let digests: [[UInt8]]

    public init(_ keys: [String]) {
        digests = keys.map { Array(SHA256.hash(data: Array($0.utf8))) }
    }

    public var isEmpty: Bool { digests.isEmpty }

    /// Whether `candidate` is one of the keys. Every key is compared, in full, every time.
    public func matches(_ candidate: String) -> Bool {
        guard !digests.isEmpty else { return false }
        let digest = Array(SHA256.hash(data: Array(candidate.utf8)))
        var found: UInt8 = 0
        for key in digests {
            var difference: UInt8 = 0
            for index in 0..<key.count { difference |= key[index] ^ digest[index] }
            found |= difference == 0 ? 1 : 0
        }
        return found == 1
    }
}
