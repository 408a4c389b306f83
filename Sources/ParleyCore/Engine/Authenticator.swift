/// Establishes who a connection or request acts as. Every transport asks the same one.
public protocol Authenticator: Sendable {
    /// True when anyone may claim any user id (development mode).
    var isOpen: Bool { get }
    /// `token` is a bearer credential (JWT or API key) when the client gave one; `user` is
    /// the user id the client claims, honoured only in open mode.
    func authenticate(token: String?, user: String?) async throws(ParleyError) -> Identity
}

extension Authenticator {
    /// Authenticates an `Authorization`-style value, as HTTP headers and gRPC `authorization`
    /// metadata carry it: `Bearer <JWT or API key>`. A missing or non-Bearer value counts as
    /// no credential.
    public func authenticate(authorization: String?, user: String? = nil) async throws(ParleyError) -> Identity {
        try await authenticate(token: BearerToken.parse(authorization), user: user)
    }
}

/// `Authorization: Bearer <credential>` (the scheme is case-insensitive).
public enum BearerToken {
    public static func parse(_ authorization: String?) -> String? {
        guard let authorization else { return nil }
        let trimmed = authorization.drop { $0 == " " }
        guard trimmed.count > 7, trimmed.prefix(7).lowercased() == "bearer " else { return nil }
        let credential = trimmed.dropFirst(7).trimmingCharacters(in: " \t")
        return credential.isEmpty ? nil : credential
    }
}

extension Substring {
    fileprivate func trimmingCharacters(in set: String) -> String {
        let blanks = Set(set)
        guard let first = firstIndex(where: { !blanks.contains($0) }), let last = lastIndex(where: { !blanks.contains($0) }) else { return "" }
        return String(self[first...last])
    }
}
