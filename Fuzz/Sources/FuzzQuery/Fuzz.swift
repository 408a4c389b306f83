#if canImport(Glibc)
import Glibc
#endif
import FuzzDriver
import ParleyCore

/// A query string's history parameters and an SSE resume point are either accepted within the
/// protocol's ranges or refused with `bad_request`; the accepted cursors select a range
/// without overflowing.
@main
enum Fuzzer {
    static func main() {
        exit(runFuzzer(fuzzQuery))
    }
}

private func fuzzQuery(_ pointer: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data = pointer else { return 0 }
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    var values: [Substring: Substring] = [:]
    for pair in text.split(separator: "&") {
        let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
        values[parts[0]] = parts.count > 1 ? parts[1] : ""
    }
    let limits = Limits()
    do {
        let before = try Validation.seq(try QueryValues.int64(values["before"], name: "before"), field: "before")
        let after = try Validation.seq(try QueryValues.int64(values["after"], name: "after"), field: "after")
        let limit = try Validation.historyLimit(try QueryValues.int64(values["limit"], name: "limit").map { Int(clamping: $0) }, limits: limits)
        precondition((1...limits.maxHistoryLimit).contains(limit))
        if let range = HistoryQuery(before: before, after: after, limit: limit).seqRange {
            precondition(range.after >= 0 && range.before - range.after > 1)
        }
    } catch {
        precondition(error.code == .badRequest)
    }
    do {
        if let since = try QueryValues.resumePoint(values["since"].map(String.init)) { precondition(since >= 0) }
    } catch {
        precondition(error.code == .badRequest)
    }
    return 0
}
