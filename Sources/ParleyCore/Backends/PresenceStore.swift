import ServiceLifecycle

/// Who is online in which room, across every instance.
///
/// A user is present in a room while at least one of their sessions is. `add` and `remove`
/// report the transitions (first session in, last session out) so that exactly one `join` and
/// one `leave` event is emitted per transition. A distributed store also removes the sessions
/// of an instance that died and reports those leaves.
public protocol PresenceStore: Service {
    /// Returns true when this is the user's first session in the room.
    func add(room: String, user: String, session: String, at: Timestamp) async throws -> Bool
    /// Returns true when this was the user's last session in the room.
    func remove(room: String, user: String, session: String) async throws -> Bool
    /// Present users, by name.
    func members(room: String) async throws -> [PresenceEntry]
    /// The rooms where the user is present, by name.
    func rooms(user: String) async throws -> [String]
    /// Number of present users per room, for rooms with anyone present.
    func onlineCounts() async throws -> [String: Int]

    /// Marks a session as showing Parley to its user or not (a browser tab in front, or
    /// hidden). Whoever has a visible session is not sent Web Push. A session that ends is
    /// marked not visible; a dead instance's sessions stop counting by themselves.
    func setVisible(user: String, session: String, _ visible: Bool) async throws
    /// Whether any session of `user`, on any instance, is visible.
    func hasVisibleSession(user: String) async throws -> Bool
}
