import FuzzDriver
import Foundation
import ParleyCore

/// Every frame decodes to a command or to a `bad_request` with a message; nothing traps.
@main
enum Fuzzer {
    static func main() {
        exit(runFuzzer(fuzzCommands))
    }
}

private func fuzzCommands(_ pointer: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data = pointer else { return 0 }
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    switch ClientFrameDecoder().decode(text) {
    case .success:
        break
    case .failure(let failure):
        precondition(failure.error.code == .badRequest && !failure.error.message.isEmpty, "\(failure.error)")
    }
    return 0
}
