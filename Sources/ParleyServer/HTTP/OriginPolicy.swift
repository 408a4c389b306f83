import Hummingbird
import ParleyCore

/// Which browser origins may open a WebSocket. Browsers always send `Origin` on a WebSocket
/// upgrade, so a page of another site is refused before it can use a visitor's connection;
/// clients that are not browsers send none and are let through (they authenticate like
/// everyone else).
struct OriginPolicy: Sendable {
    /// Lower-cased allowed origins; nil allows every origin.
    let allowed: Set<String>?

    init(_ origins: [String]?) {
        guard let origins, !origins.contains("*") else {
            allowed = nil
            return
        }
        allowed = Set(origins.map { Self.normalize($0) })
    }

    func allows(_ origin: String?) -> Bool {
        guard let allowed, let origin else { return true }
        return allowed.contains(Self.normalize(origin))
    }

    func check(_ request: Request) throws(ParleyError) {
        guard allows(request.headers[.origin]) else {
            throw ParleyError(.forbidden, "origin \(request.headers[.origin] ?? "") is not allowed")
        }
    }

    static func normalize(_ origin: String) -> String {
        var origin = origin.lowercased()
        while origin.hasSuffix("/") { origin.removeLast() }
        return origin
    }
}
