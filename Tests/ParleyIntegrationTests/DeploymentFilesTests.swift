import Foundation
import Testing

/// The deployment files, validated offline (no container engine runs here): the Compose file
/// by Debian's `docker-compose config`, the Kubernetes manifests by `kubernetes-validate`
/// against the API's schemas, and the Dockerfile for what operators rely on. Each validator is
/// also shown a broken file, so a validator that accepts anything fails the test.
///
/// Skipped without docker-compose or Python's kubernetes-validate unless `PARLEY_REQUIRE_DEPLOY=1`
/// (set by `.ci/run`, which installs them).
@Suite("Deployment files")
struct DeploymentFilesTests {
    static var required: Bool { ProcessInfo.processInfo.environment["PARLEY_REQUIRE_DEPLOY"] == "1" }
    static let deploy = BrowserTests.repository.appendingPathComponent("deploy")

    static func tool(_ name: String) -> URL? {
        for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":") {
            let candidate = URL(fileURLWithPath: String(directory)).appendingPathComponent(name)
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        }
        return nil
    }

    @Test("docker-compose accepts deploy/docker-compose.yml: Redis with a password, PostgreSQL, three instances, nginx", .enabled(if: required || tool("docker-compose") != nil))
    func compose() async throws {
        let compose = try #require(Self.tool("docker-compose"), "docker-compose is not installed")
        let file = Self.deploy.appendingPathComponent("docker-compose.yml").path
        let environment = Self.deploy.appendingPathComponent("env.example").path
        let result = try await runToCompletion(compose, ["-f", file, "--env-file", environment, "config"], timeout: .seconds(60))
        #expect(result.status == 0, "\(result.output)")
        for service in ["redis:", "postgres:", "parley-1:", "parley-2:", "parley-3:", "nginx:"] {
            #expect(result.output.contains("  \(service)"), "no \(service) service")
        }
        #expect(result.output.contains("--requirepass"))
        #expect(result.output.contains("PARLEY_REDIS_URL: redis://:change-me@redis:6379"))
        // Without the passwords, it refuses to start rather than run Redis open.
        let empty = FileManager.default.temporaryDirectory.appendingPathComponent("compose-\(UUID().uuidString).env")
        try "".write(to: empty, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: empty) }
        let bare = try await runToCompletion(compose, ["-f", file, "--env-file", empty.path, "config", "-q"], timeout: .seconds(60))
        #expect(bare.status != 0 && bare.output.contains("REDIS_PASSWORD"), "\(bare.output)")
        // And a broken file is refused: the check can fail.
        let broken = FileManager.default.temporaryDirectory.appendingPathComponent("compose-\(UUID().uuidString).yml")
        try "services:\n  parley:\n    image: parley\n    ports: 8080\n    restart: sometimes\n".write(to: broken, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: broken) }
        let refused = try await runToCompletion(compose, ["-f", broken.path, "config", "-q"], timeout: .seconds(60))
        #expect(refused.status != 0, "\(refused.output)")
    }

    @Test("kubernetes-validate accepts every manifest in deploy/kubernetes, strictly", .enabled(if: required || pythonCanImport("kubernetes_validate")))
    func kubernetes() async throws {
        let env = URL(fileURLWithPath: "/usr/bin/env")
        let validate = ["python3", "-m", "kubernetes_validate"]
        let directory = Self.deploy.appendingPathComponent("kubernetes")
        let manifests = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".yaml") }.sorted()
        #expect(manifests == [
            "configmap.yaml", "deployment.yaml", "horizontalpodautoscaler.yaml", "poddisruptionbudget.yaml", "secret.yaml", "service.yaml",
        ])
        let result = try await runToCompletion(
            env, validate + ["--strict"] + manifests.map { directory.appendingPathComponent($0).path }, timeout: .seconds(120)
        )
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.components(separatedBy: " passed for resource ").count - 1 == manifests.count, "\(result.output)")
        let deployment = try String(contentsOf: directory.appendingPathComponent("deployment.yaml"), encoding: .utf8)
        for needed in ["path: /readyz", "path: /healthz", "preStop:", "terminationGracePeriodSeconds:", "runAsNonRoot: true"] {
            #expect(deployment.contains(needed), "deployment.yaml lacks \(needed)")
        }
        // A manifest with a wrong type is refused: the check can fail.
        let broken = FileManager.default.temporaryDirectory.appendingPathComponent("deployment-\(UUID().uuidString).yaml")
        try deployment.replacingOccurrences(of: "replicas: 3", with: "replicas: three").write(to: broken, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: broken) }
        let refused = try await runToCompletion(env, validate + ["--strict", broken.path], timeout: .seconds(120))
        #expect(refused.status != 0, "\(refused.output)")
    }

    @Test("the Dockerfile builds in one stage and runs in another, as a user, with a health check")
    func dockerfile() throws {
        let text = try String(contentsOf: BrowserTests.repository.appendingPathComponent("Dockerfile"), encoding: .utf8)
        let lines = text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.hasPrefix("#") }
        #expect(lines.filter { $0.hasPrefix("FROM ") }.count == 2)
        #expect(lines.contains { $0.hasPrefix("FROM swift:") && $0.hasSuffix(" AS build") })
        #expect(lines.contains { $0.hasPrefix("COPY --from=build ") })
        let user = try #require(lines.last { $0.hasPrefix("USER ") })
        #expect(user != "USER root" && user != "USER 0")
        #expect(lines.contains { $0.hasPrefix("HEALTHCHECK ") } && text.contains("/healthz"))
        #expect(text.contains("parley_ParleyServer.resources"), "the web client must ship next to the binary")
        #expect(lines.contains("ENTRYPOINT [\"/usr/local/bin/parley\"]"))
    }
}
