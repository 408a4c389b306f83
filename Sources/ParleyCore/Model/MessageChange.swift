/// A change to a stored message (an edit, a deletion, a reaction), and the rules that decide
/// it. Every store applies them inside the transaction that gives the change its `seq`, against
/// the message as it is then, so two changes racing each other (a delete and an edit, two
/// clicks on the same reaction) are decided in the room's order, the same way in every store.
public struct MessageChange: Sendable, Hashable {
    public enum Action: Sendable, Hashable {
        /// The draft's content becomes the message's content.
        case edit
        case delete
        /// The draft's content is the emoji.
        case react(ReactionIntent)
    }

    public enum ReactionIntent: Sendable, Hashable {
        case add, remove, toggle
    }

    /// The id of the message to change.
    public var target: String
    public var action: Action
    /// How long after it was sent a message may be edited; nil: any time.
    public var editWindow: Duration?
    /// Most different emoji on one message.
    public var maxReactions: Int

    public init(target: String, action: Action, editWindow: Duration? = nil, maxReactions: Int = 20) {
        self.target = target
        self.action = action
        self.editWindow = editWindow
        self.maxReactions = maxReactions
    }

    public enum Outcome: Sendable, Hashable {
        /// Store `change` (the store sets its `seq`) and make `target` the message's state.
        case store(change: Message, target: Message)
        /// Nothing to store: the message is already so (a second delete, a reaction added
        /// twice). Nothing is delivered; the ack shows the message as it is.
        case unchanged(Message)
    }

    /// Decides `draft` (whose `change` is self) against `current`, the target as stored now
    /// (nil when there is no message with that id).
    public func apply(_ draft: MessageDraft, to current: Message?) throws(ParleyError) -> Outcome {
        guard let current, current.room == draft.room, current.kind == .message else {
            throw ParleyError(.notFound, "no message '\(target)' in room \(draft.room)")
        }
        if current.deleted {
            if case .delete = action { return .unchanged(current) }
            throw ParleyError(.notFound, "message '\(target)' was deleted")
        }
        var next = current
        let kind: MessageKind
        switch action {
        case .edit:
            guard draft.user == current.user else { throw ParleyError(.forbidden, "only its author may edit a message") }
            if let editWindow, draft.timestamp.milliseconds - current.timestamp.milliseconds > editWindow.milliseconds {
                throw ParleyError(.forbidden, "a message may be edited for \(editWindow.milliseconds / 1000) s after it is sent")
            }
            guard draft.content != current.content else { return .unchanged(current) }
            next.content = draft.content
            next.edited = draft.timestamp
            kind = .edit
        case .delete:
            guard draft.user == current.user || draft.privileged else {
                throw ParleyError(.forbidden, "only its author or a moderator may delete a message")
            }
            next.content = ""
            next.deleted = true
            next.reactions = []
            next.attachments = []
            kind = .delete
        case .react(let intent):
            let index = current.reactions.firstIndex { $0.emoji == draft.content }
            let reacted = index.map { current.reactions[$0].users.contains(draft.user) } ?? false
            let adding = switch intent {
            case .add: true
            case .remove: false
            case .toggle: !reacted
            }
            guard adding != reacted else { return .unchanged(current) }
            if adding {
                if let index {
                    next.reactions[index].users.append(draft.user)
                } else {
                    guard current.reactions.count < maxReactions else {
                        throw ParleyError.badRequest("a message may have at most \(maxReactions) different reactions")
                    }
                    next.reactions.append(Reaction(emoji: draft.content, users: [draft.user]))
                }
                kind = .react
            } else {
                let index = index!
                next.reactions[index].users.removeAll { $0 == draft.user }
                if next.reactions[index].users.isEmpty { next.reactions.remove(at: index) }
                kind = .unreact
            }
        }
        let change = Message(
            id: draft.id, room: draft.room, seq: 0, user: draft.user, content: kind == .delete ? "" : draft.content,
            timestamp: draft.timestamp, clientId: draft.clientId, kind: kind, target: current.id
        )
        return .store(change: change, target: next)
    }
}

extension Message {
    /// The message as a reply to `answered` shows it (`replyTo` must name `answered`).
    public func quoting(_ answered: Message?) -> Message {
        var message = self
        message.quote = answered.map(Quote.init(of:))
        return message
    }

    /// Checks that `answered`, the message a new message's `replyTo` names, can be answered.
    public static func checkReplyTarget(_ answered: Message?, id: String, room: String) throws(ParleyError) {
        guard let answered, answered.room == room, answered.kind == .message else {
            throw ParleyError(.notFound, "no message '\(id)' in room \(room) to reply to")
        }
        guard !answered.deleted else { throw ParleyError(.notFound, "message '\(id)' was deleted") }
    }
}
