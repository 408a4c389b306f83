import ParleyCore

/// Which browser origins may open a WebSocket (and post to the HTTP API). Browsers always send `Origin` on a WebSocket
/// upgrade, so a page of another site is refused before it can use a visitor's connection;
/// clients that are not browsers send none and are let through (they authenticate like
/// everyone else).
struct OriginPolicy: Sendable {
    /// Lower-cased allowed origins; nil allows every origin, or only the server's own when
    /// `sameOriginOnly`.
    let allowed: Set<String>?
    /// With no list: only pages of the server's own origin (its `Host`). The default in open
    /// mode, where a connection may claim any user: another site's page (or any page, for a
    /// Parley on localhost or an intranet) must not chat as anyone through a visitor's browser.
    let sameOriginOnly: Bool

    init(_ origins: [String]?, sameOriginByDefault: Bool = false) {
        guard let origins, !origins.contains("*") else {
            allowed = nil
            sameOriginOnly = origins == nil && sameOriginByDefault
            return
        }
        allowed = Set(origins.map { Self.normalize($0) })
        sameOriginOnly = false
    }

    /// Whether a request from a page of `origin` to this server (`host`, its `Host` header)
    /// is allowed; a request without `Origin` (not a browser) is.
    func allows(_ origin: String?, host: String? = nil) -> Bool {
        // Browsers send the page's origin (`http`, `https`, or `null`); anything else (say the
        // `ws://` some WebSocket libraries put there) is no browser page.
        guard let origin, Self.isBrowserOrigin(origin) else { return true }
        if let allowed { return allowed.contains(Self.normalize(origin)) || Self.isSameOrigin(origin, host: host) }
        return !sameOriginOnly || Self.isSameOrigin(origin, host: host)
    }

    static func isBrowserOrigin(_ origin: String) -> Bool {
        let lowered = origin.lowercased()
        return lowered == "null" || lowered.hasPrefix("http://") || lowered.hasPrefix("https://")
    }

    /// Whether `origin` (`scheme://host[:port]`) names the host the request was sent to.
    static func isSameOrigin(_ origin: String, host: String?) -> Bool {
        guard let host, let separator = origin.range(of: "://") else { return false }
        return normalize(String(origin[separator.upperBound...])) == normalize(host)
    }

    static func normalize(_ origin: String) -> String {
        var origin = origin.lowercased()
        while origin.hasSuffix("/") { origin.removeLast() }
        return origin
    }
}
