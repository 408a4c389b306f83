import Foundation
import Histogram
import HummingbirdWSClient
import Synchronization

/// One subscriber socket: joins its room and checks that seqs arrive in order, once each.
final class Subscriber: Sendable {
    struct Snapshot {
        var joined = false
        var closed = false
        var last = 0
        var received = 0
        var outOfOrder = 0
        var duplicates = 0
    }

    let index: Int
    let room: String
    let url: String
    private let state = Mutex(Snapshot())
    private let latency = Mutex(Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three))

    init(index: Int, room: String, url: String) {
        self.index = index
        self.room = room
        self.url = url
    }

    var snapshot: Snapshot { state.withLock { $0 } }

    func run() async {
        do {
            try await WebSocketClient.connect(url: "\(url)?user=sub-\(index)", configuration: .init(maxFrameSize: 1 << 24), logger: quietLogger) { inbound, outbound, _ in
                try await outbound.write(.text(#"{"event":"join","data":{"room":"\#(self.room)"},"id":1}"#))
                for try await message in inbound.messages(maxSize: 1 << 24) {
                    guard case .text(var text) = message else { continue }
                    if text.utf8.starts(with: #"{"event":"message""#.utf8) {
                        self.record(&text)
                    } else if text.utf8.starts(with: #"{"event":"ack","id":1,"#.utf8) {
                        self.state.withLock { $0.joined = true }
                    }
                }
            }
        } catch {}
        state.withLock { $0.closed = true }
    }

    /// Counts the `message` frame `text` (Parley JSON or Socket.IO: the fields are found by name).
    func record(_ text: inout String) {
        guard let seq = FrameScanner.integer(after: #""seq":"#, in: &text) else { return }
        record(seq: seq, sentAt: FrameScanner.integer(after: #""content":""#, in: &text).map(UInt64.init))
    }

    func markJoined() { state.withLock { $0.joined = true } }
    func markClosed() { state.withLock { $0.closed = true } }

    /// Counts a delivered message; `sentAt` is the publisher's stamp at the start of its content.
    func record(seq: Int, sentAt: UInt64?) {
        let now = monotonicNanos()
        if let sentAt, now >= sentAt {
            _ = latency.withLock { $0.record((now - sentAt) / 1000) }
        }
        state.withLock { state in
            if seq <= state.last {
                state.duplicates += 1
                return
            }
            if seq != state.last + 1 { state.outOfOrder += 1 }
            state.last = seq
            state.received += 1
        }
    }

    func mergeLatency(into histogram: inout Histogram<UInt64>) {
        latency.withLock { histogram.add($0) }
    }
}

/// Counters of one publishing socket.
final class PublisherStats: Sendable {
    struct Snapshot {
        var sent = 0
        var acked = 0
        var errors = 0
        var lastSeq = 0
        var outstanding: Int { sent - acked - errors }
    }

    let room: String
    let startedAt = monotonicNanos()
    private let state = Mutex(Snapshot())
    private let latency = Mutex(Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three))

    init(room: String) {
        self.room = room
    }

    var snapshot: Snapshot { state.withLock { $0 } }

    func sent() { state.withLock { $0.sent += 1 } }
    func failed() { state.withLock { $0.errors += 1 } }

    func acked(seq: Int, latencyMicros: UInt64) {
        state.withLock { state in
            state.acked += 1
            state.lastSeq = max(state.lastSeq, seq)
        }
        _ = latency.withLock { $0.record(latencyMicros) }
    }

    func mergeLatency(into histogram: inout Histogram<UInt64>) {
        latency.withLock { histogram.add($0) }
    }
}

/// A counting semaphore bounding unacknowledged messages.
final class Window: Sendable {
    private let state: Mutex<(available: Int, waiters: [CheckedContinuation<Void, Never>])>

    init(size: Int) {
        state = Mutex((size, []))
    }

    func acquire() async {
        await withCheckedContinuation { continuation in
            let granted = state.withLock { state -> Bool in
                if state.available > 0 {
                    state.available -= 1
                    return true
                }
                state.waiters.append(continuation)
                return false
            }
            if granted { continuation.resume() }
        }
    }

    func release() {
        state.withLock { state -> CheckedContinuation<Void, Never>? in
            if !state.waiters.isEmpty { return state.waiters.removeFirst() }
            state.available += 1
            return nil
        }?.resume()
    }
}
