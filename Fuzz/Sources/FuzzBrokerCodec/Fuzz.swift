#if canImport(Glibc)
import Glibc
#endif
import FuzzDriver
import NIOCore
import ParleyCore

/// Any bytes on a broker channel decode to an event or to nil; a decoded event encodes to the
/// same bytes it decodes from again (the codec is its own inverse).
@main
enum Fuzzer {
    static func main() {
        exit(runFuzzer(fuzzBrokerCodec))
    }
}

private func fuzzBrokerCodec(_ pointer: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data = pointer else { return 0 }
    let buffer = ByteBuffer(bytes: UnsafeBufferPointer(start: data, count: size))
    guard let event = BrokerCodec.decode(buffer) else { return 0 }
    let encoded = BrokerCodec.encode(event)
    precondition(BrokerCodec.decode(encoded) == event, "round trip changed \(event)")
    return 0
}
