import Foundation
import Histogram

/// Latency percentiles in milliseconds.
struct LatencySummary: Codable {
    var p50: Double, p90: Double, p99: Double, p999: Double, max: Double, count: UInt64

    init(_ histogram: Histogram<UInt64>) {
        func ms(_ micros: UInt64) -> Double { (Double(micros) / 10).rounded() / 100 }
        p50 = ms(histogram.valueAtPercentile(50))
        p90 = ms(histogram.valueAtPercentile(90))
        p99 = ms(histogram.valueAtPercentile(99))
        p999 = ms(histogram.valueAtPercentile(99.9))
        max = ms(histogram.max)
        count = histogram.totalCount
    }

    var line: String { "p50 \(p50) ms  p90 \(p90) ms  p99 \(p99) ms  p99.9 \(p999) ms  max \(max) ms" }
}

/// What `parley bench` measured; `--json` prints exactly this.
struct LoadReport: Codable {
    var urls: [String]
    var connections: Int
    var rooms: Int
    var publishers: Int
    var ratePerPublisher: Double
    var window: Int
    var messageBytes: Int
    var durationSeconds: Double
    var published: Int
    var acked: Int
    var publishErrors: Int
    var ackedPerSecond: Double
    var deliveries: Int
    var deliveriesPerSecond: Double
    /// Acked messages a subscriber never received.
    var lost: Int
    /// Deliveries that were not the next seq of their room.
    var outOfOrder: Int
    var duplicates: Int
    var disconnects: Int
    /// From the publisher's send to the subscriber's receive.
    var deliveryLatency: LatencySummary
    /// From the publisher's send to its ack (the message is durably stored).
    var ackLatency: LatencySummary
    /// The server process's CPU time and memory (`--server-pid`).
    var server: ServerUsage?

    var text: String {
        """
        \(connections) subscribers over \(rooms) room(s), \(publishers) publisher(s), \(messageBytes)-byte messages, \(String(format: "%.1f", durationSeconds)) s
        published \(published), acked \(acked) (\(Int(ackedPerSecond))/s), publish errors \(publishErrors)
        deliveries \(deliveries) (\(Int(deliveriesPerSecond))/s)
        lost \(lost), out of order \(outOfOrder), duplicates \(duplicates), disconnects \(disconnects)
        delivery latency: \(deliveryLatency.line)
        ack latency:      \(ackLatency.line)
        """ + (server.map { "\n" + $0.text } ?? "")
    }
}

/// The server's CPU time per phase and resident memory, read from /proc by `parley bench`.
struct ServerUsage: Codable {
    /// CPU time to accept, upgrade and join the subscribers (and any hold).
    var connectCPUSeconds: Double
    /// CPU time while publishing and draining deliveries.
    var publishCPUSeconds: Double
    var cpuMicrosPerDelivery: Double?
    var deliveriesPerCPUSecond: Double?
    var residentKiBBefore: Int
    var residentKiBIdle: Int
    var residentKiBAfter: Int
    /// Resident memory the subscribers added, per subscriber.
    var kibPerConnection: Double?

    var text: String {
        func format(_ value: Double?, _ digits: Int = 2) -> String { value.map { String(format: "%.\(digits)f", $0) } ?? "-" }
        return """
            server CPU: connect+join \(format(connectCPUSeconds)) s, publishing \(format(publishCPUSeconds)) s, \(format(cpuMicrosPerDelivery)) us per delivery, \(format(deliveriesPerCPUSecond, 0)) deliveries per CPU-second
            server memory: \(residentKiBBefore) KiB before, \(residentKiBIdle) KiB with the subscribers idle (\(format(kibPerConnection)) KiB each), \(residentKiBAfter) KiB after
            """
    }
}

/// Reads a local process's CPU time (`/proc/PID/stat`: utime + stime) and resident memory
/// (`/proc/PID/status`: VmRSS).
struct ServerProcessProbe {
    let pid: Int32

    struct Sample {
        var cpuSeconds: Double
        var residentKiB: Int
    }

    func sample() throws -> Sample {
        let stat = try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
        // Fields after the command name (which may hold spaces) start at field 3.
        guard let close = stat.lastIndex(of: ")") else { throw BenchError("unreadable /proc/\(pid)/stat") }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else {
            throw BenchError("unreadable /proc/\(pid)/stat")
        }
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        let rss = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") }
            .flatMap { Int($0.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") } ?? 0
        return Sample(cpuSeconds: (user + system) / ticks, residentKiB: rss)
    }
}

/// Monotonic nanoseconds, comparable across the bench's tasks.
func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Pulls fields out of Parley's own frames without a JSON parser: the bench must not be
/// slower than the server it measures.
enum FrameScanner {
    /// The integer after `"key":`, or nil.
    static func integer(after key: StaticString, in text: inout String) -> Int? {
        text.withUTF8 { integer(after: key, in: $0) }
    }

    static func integer(after key: StaticString, in bytes: UnsafeBufferPointer<UInt8>) -> Int? {
        guard let start = find(key, in: bytes) else { return nil }
        var value = 0
        var index = start
        var digits = 0
        while index < bytes.count, bytes[index] >= 48, bytes[index] <= 57 {
            value = value * 10 + Int(bytes[index] - 48)
            index += 1
            digits += 1
        }
        return digits > 0 ? value : nil
    }

    static func starts(_ bytes: UnsafeBufferPointer<UInt8>, with prefix: StaticString) -> Bool {
        bytes.count >= prefix.utf8CodeUnitCount && memcmp(bytes.baseAddress!, prefix.utf8Start, prefix.utf8CodeUnitCount) == 0
    }

    static func contains(_ key: StaticString, in text: inout String) -> Bool {
        text.withUTF8 { find(key, in: $0) != nil }
    }

    private static func find(_ key: StaticString, in bytes: UnsafeBufferPointer<UInt8>) -> Int? {
        let needle = UnsafeBufferPointer(start: key.utf8Start, count: key.utf8CodeUnitCount)
        guard bytes.count >= needle.count else { return nil }
        var index = 0
        while index <= bytes.count - needle.count {
            if bytes[index] == needle[0], memcmp(bytes.baseAddress! + index, needle.baseAddress!, needle.count) == 0 {
                return index + needle.count
            }
            index += 1
        }
        return nil
    }
}
