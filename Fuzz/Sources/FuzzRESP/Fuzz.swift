#if canImport(Glibc)
import Glibc
#endif
import FuzzDriver
import NIOCore

/// Whatever a server sends, the decoder yields tokens or throws `protocolError`, within its
/// limits; nothing traps. The input is also fed in two pieces, as a socket may deliver it.
@main
enum Fuzzer {
    static func main() {
        exit(runFuzzer(fuzzRESP))
    }
}

private func fuzzRESP(_ pointer: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data = pointer else { return 0 }
    let bytes = UnsafeBufferPointer(start: data, count: size)
    let limits = RESPLimits(maxDepth: 16, maxBulkLength: 1 << 16, maxAggregateCount: 1 << 12, maxLineLength: 1 << 12, maxBufferedBytes: 1 << 20)
    for split in [size, size / 2] {
        var decoder = RESPDecoder(limits: limits)
        var buffer = ByteBuffer(bytes: bytes[0..<split])
        do {
            while let token = try decoder.decode(buffer: &buffer) { _ = token.description }
            buffer.writeBytes(bytes[split...])
            while let token = try decoder.decode(buffer: &buffer) { _ = token.description }
        } catch let error as RedisError {
            precondition(error.code == .protocolError, "\(error)")
        } catch {
            preconditionFailure("unexpected \(error)")
        }
    }
    return 0
}
