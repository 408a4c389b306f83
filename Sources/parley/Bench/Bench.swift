import ArgumentParser
import Foundation
import Histogram
import HummingbirdWSClient
import Logging
import Synchronization

/// `parley bench`: a load generator over real WebSockets that checks order and loss as it
/// measures.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load a running Parley over WebSockets and report throughput, latency, loss and order.",
        discussion: """
            Opens --connections subscriber sockets spread over --rooms fresh rooms (and over every \
            --url, for a cluster; or JoinChat streams to every --grpc target), then --publishers \
            sockets that publish --size-byte messages for \
            --duration seconds, each at --rate messages per second or, with --rate 0, as fast as \
            the server acks them with at most --window unacknowledged. Start the server with \
            PARLEY_RATE_PER_SEC=0 when publishing faster than its default limit.
            """
    )

    @Option(name: .customLong("url"), help: "WebSocket URL of a server; repeat for several instances.")
    var urls: [String] = ["ws://127.0.0.1:8080/ws"]
    @Option(help: "Subscriber connections.") var connections = 100
    @Option(help: "Rooms the subscribers and publishers are spread over.") var rooms = 1
    @Option(help: "Publishing connections.") var publishers = 1
    @Option(help: "Messages per second per publisher; 0 publishes as fast as acks allow.") var rate: Double = 0
    @Option(help: "Most unacknowledged messages per publisher.") var window = 16
    @Option(help: "Message content size in bytes.") var size = 100
    @Option(help: "Seconds of publishing.") var duration: Double = 10
    @Option(help: "Seconds to keep the subscribers open and idle after they joined, before publishing (to measure memory per connection).")
    var hold: Double = 0
    @Option(name: .customLong("grpc"), help: "Subscribe over gRPC JoinChat to this host:port instead of WebSockets; repeat for several instances. Publishers stay on --url.")
    var grpcTargets: [String] = []
    @Option(name: .customLong("server-pid"), help: "PID of the server process on this machine: report its CPU time per phase (and per delivery) and its resident memory per subscriber, read from /proc.")
    var serverPID: Int32?
    @Flag(help: "Subscribe as Socket.IO clients (Engine.IO WebSocket transport at /socket.io/ of each --url's server) instead of Parley WebSockets. Publishers stay on --url.")
    var socketio = false
    @Flag(help: "Print the report as JSON on stdout.") var json = false

    func validate() throws {
        guard connections >= 0, rooms > 0, publishers >= 0, window > 0, size >= 24, duration > 0, hold >= 0, !urls.isEmpty else {
            throw ValidationError("need rooms, window > 0, publishers >= 0, size >= 24, duration > 0, hold >= 0 and a URL")
        }
    }

    func run() async throws {
        let runID = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        let roomNames = (0..<rooms).map { "bench-\(runID)-\($0)" }
        let subscribers = (0..<connections).map { Subscriber(index: $0, room: roomNames[$0 % rooms], url: urls[$0 % urls.count]) }

        let grpc = grpcTargets.isEmpty ? nil : try GRPCConnections(targets: grpcTargets, streams: connections)
        defer { grpc?.close() }
        let server = serverPID.map(ServerProcessProbe.init)
        let beforeConnect = try server?.sample()
        let subscriberTasks = try await openSubscribers(subscribers, grpc: grpc)
        if hold > 0 {
            FileHandle.standardError.write(Data("holding \(subscribers.count) idle connections for \(hold) s\n".utf8))
            try await Task.sleep(for: .milliseconds(Int(hold * 1000)))
        }
        let beforePublish = try server?.sample()
        let publisherStats = (0..<publishers).map { PublisherStats(room: roomNames[$0 % rooms]) }
        let start = monotonicNanos()
        let deadline = start + UInt64(duration * 1e9)
        let publisherTasks = publisherStats.enumerated().map { index, stats in
            Task { await publish(index: index, stats: stats, url: urls[index % urls.count], until: deadline) }
        }
        let progress = Task { await showProgress(start: start, publishers: publisherStats, subscribers: subscribers) }
        for task in publisherTasks { await task.value }
        let published = monotonicNanos()

        // Let deliveries drain: every subscriber should reach its room's last acked seq.
        let lastAcked = Dictionary(publisherStats.map { ($0.room, $0.snapshot.lastSeq) }, uniquingKeysWith: max)
        let drainDeadline = monotonicNanos() + 10_000_000_000
        while monotonicNanos() < drainDeadline, subscribers.contains(where: { $0.snapshot.last < lastAcked[$0.room] ?? 0 && !$0.snapshot.closed }) {
            try? await Task.sleep(for: .milliseconds(20))
        }
        progress.cancel()
        let afterPublish = try server?.sample()
        // Measure before closing the subscribers, so that only server-side closes count.
        var report = makeReport(publishers: publisherStats, subscribers: subscribers, lastAcked: lastAcked, seconds: max(Double(published - start) / 1e9, 1e-9))
        if let beforeConnect, let beforePublish, let afterPublish {
            report.server = ServerUsage(
                connectCPUSeconds: beforePublish.cpuSeconds - beforeConnect.cpuSeconds,
                publishCPUSeconds: afterPublish.cpuSeconds - beforePublish.cpuSeconds,
                cpuMicrosPerDelivery: report.deliveries > 0
                    ? (afterPublish.cpuSeconds - beforePublish.cpuSeconds) * 1e6 / Double(report.deliveries) : nil,
                deliveriesPerCPUSecond: afterPublish.cpuSeconds > beforePublish.cpuSeconds
                    ? Double(report.deliveries) / (afterPublish.cpuSeconds - beforePublish.cpuSeconds) : nil,
                residentKiBBefore: beforeConnect.residentKiB,
                residentKiBIdle: beforePublish.residentKiB,
                residentKiBAfter: afterPublish.residentKiB,
                kibPerConnection: connections > 0 ? Double(beforePublish.residentKiB - beforeConnect.residentKiB) / Double(connections) : nil
            )
        }
        for task in subscriberTasks { task.cancel() }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            FileHandle.standardError.write(Data("\n".utf8))
            print(report.text)
        }
    }

    // MARK: Subscribers

    private func openSubscribers(_ subscribers: [Subscriber], grpc: GRPCConnections?) async throws -> [Task<Void, Never>] {
        var tasks: [Task<Void, Never>] = []
        for batch in stride(from: 0, to: subscribers.count, by: 100) {
            let slice = subscribers[batch..<min(batch + 100, subscribers.count)]
            tasks += slice.map { subscriber in
                Task {
                    if let grpc {
                        await subscriber.runGRPC(grpc.client(for: subscriber.index))
                    } else if socketio {
                        await subscriber.runSocketIO()
                    } else if subscriber.url.hasPrefix("ws://") {
                        await subscriber.runOnWire()
                    } else {
                        await subscriber.run()  // wss://
                    }
                }
            }
            // Open in waves of 100 so the server's accept queue never overflows.
            let deadline = ContinuousClock.now + .seconds(30)
            while slice.contains(where: { !$0.snapshot.joined && !$0.snapshot.closed }), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        let failed = subscribers.filter { !$0.snapshot.joined }.count
        if failed > 0 { throw ValidationError("\(failed) subscribers could not connect and join") }
        FileHandle.standardError.write(Data("\(subscribers.count) subscribers joined\n".utf8))
        return tasks
    }

    // MARK: Publishers

    private func publish(index: Int, stats: PublisherStats, url: String, until deadline: UInt64) async {
        let padding = String(repeating: "x", count: size)
        let window = Window(size: self.window)
        let interval = rate > 0 ? UInt64(1e9 / rate) : 0
        do {
            try await WebSocketClient.connect(url: "\(url)?user=pub-\(index)", configuration: .init(maxFrameSize: 1 << 24), logger: quietLogger) { inbound, outbound, _ in
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        var sequence: UInt64 = 0
                        while monotonicNanos() < deadline {
                            await window.acquire()
                            if interval > 0 {
                                let due = stats.startedAt + sequence * interval
                                let now = monotonicNanos()
                                if due > now { try await Task.sleep(for: .nanoseconds(Int64(due - now))) }
                            }
                            sequence += 1
                            let stamp = String(monotonicNanos())
                            let content = stamp + " " + padding.prefix(size - stamp.count - 1)
                            stats.sent()
                            try await outbound.write(.text(#"{"event":"message","data":{"room":"\#(stats.room)","content":"\#(content)"},"id":\#(sequence)}"#))
                        }
                        // Wait for outstanding acks (bounded): a message stored but not counted
                        // would make the report's acked and delivered disagree with the server.
                        let drain = monotonicNanos() + 30_000_000_000
                        while stats.snapshot.outstanding > 0, monotonicNanos() < drain {
                            try await Task.sleep(for: .milliseconds(5))
                        }
                    }
                    group.addTask {
                        for try await message in inbound.messages(maxSize: 1 << 24) {
                            guard case .text(var text) = message else { continue }
                            if text.utf8.starts(with: #"{"event":"ack""#.utf8) {
                                let seq = FrameScanner.integer(after: #""seq":"#, in: &text) ?? 0
                                let sentAt = FrameScanner.integer(after: #""content":""#, in: &text).map(UInt64.init) ?? monotonicNanos()
                                stats.acked(seq: seq, latencyMicros: (monotonicNanos() - sentAt) / 1000)
                                window.release()
                            } else if text.utf8.starts(with: #"{"event":"error""#.utf8) {
                                stats.failed()
                                window.release()
                            }
                        }
                    }
                    try await group.next()
                    group.cancelAll()
                }
            }
        } catch {
            FileHandle.standardError.write(Data("publisher \(index): \(error)\n".utf8))
        }
    }

    // MARK: Reporting

    private func showProgress(start: UInt64, publishers: [PublisherStats], subscribers: [Subscriber]) async {
        var previous = (acked: 0, delivered: 0)
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            let acked = publishers.reduce(0) { $0 + $1.snapshot.acked }
            let delivered = subscribers.reduce(0) { $0 + $1.snapshot.received }
            let elapsed = Double(monotonicNanos() - start) / 1e9
            let line = String(format: "\r[%5.1fs] acked %d (%d/s)  delivered %d (%d/s)   ", elapsed, acked, acked - previous.acked, delivered, delivered - previous.delivered)
            FileHandle.standardError.write(Data(line.utf8))
            previous = (acked, delivered)
        }
    }

    private func makeReport(publishers: [PublisherStats], subscribers: [Subscriber], lastAcked: [String: Int], seconds: Double) -> LoadReport {
        var deliveryLatency = Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
        var ackLatency = Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
        var received = 0, outOfOrder = 0, duplicates = 0, lost = 0, disconnects = 0
        for subscriber in subscribers {
            let snapshot = subscriber.snapshot
            received += snapshot.received
            outOfOrder += snapshot.outOfOrder
            duplicates += snapshot.duplicates
            lost += max(0, (lastAcked[subscriber.room] ?? 0) - snapshot.received)
            if snapshot.closed { disconnects += 1 }
            subscriber.mergeLatency(into: &deliveryLatency)
        }
        var published = 0, acked = 0, errors = 0
        for publisher in publishers {
            let snapshot = publisher.snapshot
            (published, acked, errors) = (published + snapshot.sent, acked + snapshot.acked, errors + snapshot.errors)
            publisher.mergeLatency(into: &ackLatency)
        }
        return LoadReport(
            urls: urls, connections: connections, rooms: rooms, publishers: self.publishers, ratePerPublisher: rate,
            window: window, messageBytes: size, durationSeconds: seconds, published: published, acked: acked,
            publishErrors: errors, ackedPerSecond: Double(acked) / seconds, deliveries: received,
            deliveriesPerSecond: Double(received) / seconds, lost: lost, outOfOrder: outOfOrder,
            duplicates: duplicates, disconnects: disconnects,
            deliveryLatency: LatencySummary(deliveryLatency), ackLatency: LatencySummary(ackLatency)
        )
    }
}

let quietLogger: Logger = {
    var logger = Logger(label: "parley.bench")
    logger.logLevel = .critical
    return logger
}()
