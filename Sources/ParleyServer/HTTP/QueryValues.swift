import Foundation
import ParleyCore

/// The numbers a client puts in query strings and headers (history cursors and `limit`, SSE
/// `since` and `Last-Event-ID`), checked for form and range before anything computes with
/// them. Pure, so that the fuzzer drives it directly.
enum QueryValues {
    /// An optional integer query value: absent is nil; anything but a 64-bit integer is
    /// `bad_request` naming the field.
    static func int64(_ raw: Substring?, name: String) throws(ParleyError) -> Int64? {
        guard let raw else { return nil }
        guard let value = Int64(raw) else { throw ParleyError.badRequest("query '\(name)' must be an integer") }
        return value
    }

    /// The resume point of an SSE stream (`Last-Event-ID` or `?since=`): a non-negative seq.
    static func resumePoint(_ raw: String?) throws(ParleyError) -> Int64? {
        guard let raw else { return nil }
        guard let since = Int64(raw.trimmingCharacters(in: .whitespaces)), since >= 0 else {
            throw ParleyError.badRequest("Last-Event-ID / since must be a non-negative integer")
        }
        return since
    }
}
