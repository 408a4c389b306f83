import Foundation

/// A throw-away certificate authority and a server certificate it signed for `127.0.0.1` and
/// `localhost` (P-256, valid two days), made with `openssl` in a fresh folder; and a second,
/// unrelated CA, to see a server refused.
public struct TestCertificates: Sendable {
    public let directory: String
    public var caFile: String { directory + "/ca.pem" }
    public var otherCAFile: String { directory + "/other-ca.pem" }
    public var certificateFile: String { directory + "/server.pem" }
    public var keyFile: String { directory + "/server.key" }

    public static func make() async throws -> TestCertificates {
        let directory = NSTemporaryDirectory() + "parley-tls-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        try Data("subjectAltName=IP:127.0.0.1,DNS:localhost\n".utf8).write(to: URL(fileURLWithPath: directory + "/ext.cnf"))
        for arguments in [
            ["req", "-x509"] + ec + ["-keyout", directory + "/ca.key", "-out", directory + "/ca.pem", "-days", "2", "-subj", "/CN=Parley Test CA"],
            ["req", "-x509"] + ec + ["-keyout", directory + "/other-ca.key", "-out", directory + "/other-ca.pem", "-days", "2", "-subj", "/CN=Other CA"],
            ["req"] + ec + ["-keyout", directory + "/server.key", "-out", directory + "/server.csr", "-subj", "/CN=localhost"],
            ["x509", "-req", "-in", directory + "/server.csr", "-CA", directory + "/ca.pem", "-CAkey", directory + "/ca.key",
             "-CAcreateserial", "-out", directory + "/server.pem", "-days", "2", "-extfile", directory + "/ext.cnf"],
        ] {
            let result = try await runCommandAsync("/usr/bin/openssl", arguments)
            guard result.status == 0 else { throw TestSupportError("openssl \(arguments[0]) failed: \(result.output)") }
        }
        return TestCertificates(directory: directory)
    }
}
