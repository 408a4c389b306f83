import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import ParleyTestSupport
import Testing

/// The operators' tools against a live server: `promtool check metrics` finds nothing to say
/// about `/metrics`, and a real Prometheus (Debian's) scrapes it, after which every query of
/// docs/grafana-dashboard.json returns series.
///
/// Skipped without Debian's `prometheus` unless `PARLEY_REQUIRE_DEPLOY=1` (set by `.ci/run`,
/// which installs it).
@Suite("Prometheus scraping Parley")
struct PrometheusScrapeTests {
    static var available: Bool {
        FileManager.default.isExecutableFile(atPath: "/usr/bin/prometheus") && FileManager.default.isExecutableFile(atPath: "/usr/bin/promtool")
    }

    @Test("promtool finds /metrics clean, and every dashboard query returns series from a real Prometheus", .enabled(if: DeploymentFilesTests.required || available))
    func scrape() async throws {
        try await withServer { server in
            // A gateway in front of it, scraped at its own /ws-metrics.
            let gateway = try await ServerProcess.startGateway(["--upstream", "127.0.0.1:\(server.grpcPort)"])
            defer { gateway.kill(SIGTERM) }
            // Traffic, so that rates and the latency histograms have something to show.
            let reader = try await TestClient.connect(port: server.port, user: "reader")
            try await reader.ack("join", ["room": "general"])
            let writer = try await TestClient.connect(port: server.port, user: "writer")

            let (body, _) = try await URLSession.shared.data(from: URL(string: server.url("/metrics"))!)
            let text = String(decoding: body, as: UTF8.self)
            let metricsFile = NSTemporaryDirectory() + "parley-metrics-\(UUID().uuidString).txt"
            try text.write(toFile: metricsFile, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: metricsFile) }
            let lint = try await runToCompletion(
                URL(fileURLWithPath: "/bin/sh"), ["-c", "/usr/bin/promtool check metrics < \(metricsFile)"], timeout: .seconds(60)
            )
            #expect(lint.status == 0 && lint.output.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "promtool: \(lint.output)")
            let (gatewayBody, _) = try await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(gateway.port)/ws-metrics")!)
            try gatewayBody.write(to: URL(fileURLWithPath: metricsFile))
            let gatewayLint = try await runToCompletion(
                URL(fileURLWithPath: "/bin/sh"), ["-c", "/usr/bin/promtool check metrics < \(metricsFile)"], timeout: .seconds(60)
            )
            #expect(gatewayLint.status == 0 && gatewayLint.output.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "promtool (gateway): \(gatewayLint.output)")

            let directory = NSTemporaryDirectory() + "parley-prometheus-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            try """
                global:
                  scrape_interval: 1s
                scrape_configs:
                  - job_name: parley
                    static_configs:
                      - targets: ["127.0.0.1:\(server.port)"]
                  - job_name: parley-gateway
                    metrics_path: /ws-metrics
                    static_configs:
                      - targets: ["127.0.0.1:\(gateway.port)"]
                """.write(toFile: directory + "/prometheus.yml", atomically: true, encoding: .utf8)
            let port = try freeLoopbackPort()
            let prometheus = try SpawnedProcess.spawn(URL(fileURLWithPath: "/usr/bin/prometheus"), [
                "--config.file=\(directory)/prometheus.yml", "--storage.tsdb.path=\(directory)/data",
                "--web.listen-address=127.0.0.1:\(port)", "--log.level=warn",
            ])
            do {
                try await Self.checkDashboard(server: server, gateway: gateway, port: port, reader: reader, writer: writer)
            } catch {
                await Self.stop(prometheus)
                throw error
            }
            await Self.stop(prometheus)
        }
    }

    /// SIGTERM, then waits for the exit by polling: blocking one of the few threads that run
    /// every test's tasks stalls all the servers of the suite.
    static func stop(_ process: SpawnedProcess) async {
        process.terminate()
        if await process.waitForExit(timeout: .seconds(10)) == nil {
            kill(process.processIdentifier, SIGKILL)
            _ = await process.waitForExit(timeout: .seconds(5))
        }
    }

    static func checkDashboard(server: TestServer, gateway: ServerProcess, port: Int, reader: TestClient, writer: TestClient) async throws {
        let api = "http://127.0.0.1:\(port)/api/v1/query?query="
        func query(_ expression: String) async throws -> [JSON] {
            let encoded = expression.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? expression
            guard let answer = try? await http("GET", api + encoded), answer.status == 200 else { return [] }
            return answer.json["data"]["result"].array ?? []
        }
        // Scraped once: then the traffic, then two more scrapes so that rates span it.
        try await waitUntil(timeout: .seconds(60), every: .milliseconds(200)) {
            let server = try await query("up{job=\"parley\"}").first?["value"][1].string
            let gateway = try await query("up{job=\"parley-gateway\"}").first?["value"][1].string
            return server == "1" && gateway == "1"
        }
        // A client through the gateway too.
        let edge = try await TestClient.connect(port: gateway.port, user: "edge")
        try await edge.ack("join", ["room": "general"])
        for index in 1...20 { try await writer.ack("message", ["room": "general", "content": "m\(index)"]) }
        _ = try await edge.messages(20, room: "general")
        _ = try await reader.messages(20, room: "general")
        try await waitUntil(timeout: .seconds(60), every: .milliseconds(200)) {
            let scrapes = try await query("count_over_time(parley_messages_published_total[1m]) >= 4").count
            let published = try await query("max_over_time(parley_messages_published_total[1m])").first?["value"][1].string
            return scrapes == 1 && published == "20"
        }

        let dashboard = try JSON.parse(String(
            contentsOf: BrowserTests.repository.appendingPathComponent("docs/grafana-dashboard.json"), encoding: .utf8
        ))
        let expressions = (dashboard["panels"].array ?? []).flatMap { ($0["targets"].array ?? []).compactMap { $0["expr"].string } }
        #expect(expressions.count >= 18)
        for expression in expressions {
            let series = try await query(expression)
            #expect(!series.isEmpty, "no series for \(expression)")
        }
        // A few answers that must be what the traffic made.
        #expect(try await query("sum(rate(parley_messages_published_total[1m])) > 0").count == 1)
        #expect(try await query("histogram_quantile(0.99, sum by (le) (rate(parley_delivery_latency_seconds_bucket[5m]))) >= 0").count == 1)
    }
}
