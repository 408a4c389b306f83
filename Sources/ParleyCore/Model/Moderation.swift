/// A moderator's action on a user in a room. It is stored as a row of the room (so it is in
/// history, for audit, and reaches every instance in order), and mutes and bans are kept as the
/// room's `Sanction` of that user, which every store checks inside the transaction that stores a
/// post, so a mute holds from the next message on, whatever instance it comes through.
public struct Moderation: Sendable, Hashable {
    /// `.kick`, `.mute`, `.unmute`, `.ban` or `.unban`.
    public var action: MessageKind
    /// The user acted on.
    public var user: String
    /// When a mute or ban ends; nil: for good.
    public var until: Timestamp?

    public init(action: MessageKind, user: String, until: Timestamp? = nil) {
        precondition(action.isModeration)
        self.action = action
        self.user = user
        self.until = until
    }
}

/// What a room holds against one user: a mute, a ban, or both, each until a time or for good.
public struct Sanction: Sendable, Hashable {
    /// Stands for "for good" where a time is stored.
    public static let forever = Timestamp(milliseconds: Int64.max)

    public var mutedUntil: Timestamp?
    public var muteReason = ""
    public var bannedUntil: Timestamp?
    public var banReason = ""

    public init(mutedUntil: Timestamp? = nil, muteReason: String = "", bannedUntil: Timestamp? = nil, banReason: String = "") {
        self.mutedUntil = mutedUntil
        self.muteReason = muteReason
        self.bannedUntil = bannedUntil
        self.banReason = banReason
    }

    /// Nothing held any more.
    public var isEmpty: Bool { mutedUntil == nil && bannedUntil == nil }

    /// The state after `moderation` (its reason is `reason`); nil when nothing is held.
    public static func after(_ moderation: Moderation, reason: String, on current: Sanction?) -> Sanction? {
        var next = current ?? Sanction()
        switch moderation.action {
        case .mute: (next.mutedUntil, next.muteReason) = (moderation.until ?? forever, reason)
        case .unmute: (next.mutedUntil, next.muteReason) = (nil, "")
        case .ban: (next.bannedUntil, next.banReason) = (moderation.until ?? forever, reason)
        case .unban: (next.bannedUntil, next.banReason) = (nil, "")
        default: break
        }
        return next.isEmpty ? nil : next
    }

    /// Why `user` may not post in `room` at `now` (a mute or a ban in force); nil when they may.
    public func refusesPosting(room: String, at now: Timestamp) -> ParleyError? {
        if let ban = refusesJoining(room: room, at: now) { return ban }
        guard let until = mutedUntil, until > now else { return nil }
        return ParleyError(.forbidden, "you are muted in room \(room)\(Self.describe(until, muteReason))")
    }

    /// Why `user` may not join or read `room` at `now` (a ban in force); nil when they may.
    public func refusesJoining(room: String, at now: Timestamp) -> ParleyError? {
        guard let until = bannedUntil, until > now else { return nil }
        return ParleyError(.forbidden, "you are banned from room \(room)\(Self.describe(until, banReason))")
    }

    private static func describe(_ until: Timestamp, _ reason: String) -> String {
        (until == forever ? "" : " until \(until.rfc3339)") + (reason.isEmpty ? "" : ": \(reason)")
    }
}

extension MessageDraft {
    /// Whose sanction in the room this draft reads and writes: the moderated user's for a
    /// moderation action, else the sender's.
    public var sanctionedUser: String { moderation?.user ?? user }

    /// Checks the sender against `sanction`, the room's sanction of them as stored now, and
    /// returns the sanction after this draft (changed only by a mute, ban, unmute or unban).
    /// Throws `forbidden` when a mute or ban refuses the draft.
    public func checked(against sanction: Sanction?) throws(ParleyError) -> Sanction? {
        if let moderation { return Sanction.after(moderation, reason: content, on: sanction) }
        if !privileged, let refusal = sanction?.refusesPosting(room: room, at: timestamp) { throw refusal }
        return sanction
    }
}
