import Foundation

struct ConfigurationError: Error {
    let message: String
    init(_ message: String) { self.message = message }
}

/// Typed reads of environment variables, with a clear error naming the variable.
struct Environment {
    let values: [String: String]

    static var current: Environment { Environment(values: ProcessInfo.processInfo.environment) }

    subscript(name: String) -> String? {
        values[name].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// A setting that turns protection on (a key, a key file): unset is nil, but set and blank
    /// is an error, so that a template left unfilled never starts the server unprotected.
    func required(_ name: String, flag: String?) throws -> String? {
        guard let raw = flag ?? values[name] else { return nil }
        guard !raw.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else {
            throw ConfigurationError("\(name) is set but empty; give it a value or unset it (an empty key must not turn authentication off)")
        }
        return raw
    }

    func int(_ name: String) throws -> Int? {
        guard let raw = self[name] else { return nil }
        guard let value = Int(raw) else { throw ConfigurationError("\(name) must be an integer, got '\(raw)'") }
        return value
    }

    func double(_ name: String) throws -> Double? {
        guard let raw = self[name] else { return nil }
        guard let value = Double(raw) else { throw ConfigurationError("\(name) must be a number, got '\(raw)'") }
        return value
    }

    /// A comma-separated list, trimmed, without empty entries; nil when not set.
    static func list(_ raw: String?) -> [String]? {
        guard let raw else { return nil }
        return raw.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    func choice<T: RawRepresentable & CaseIterable>(_ raw: String?, _ name: String) throws -> T? where T.RawValue == String {
        guard let raw else { return nil }
        guard let value = T(rawValue: raw.lowercased()) else {
            throw ConfigurationError("\(name) must be one of \(T.allCases.map(\.rawValue).joined(separator: ", ")), got '\(raw)'")
        }
        return value
    }
}
