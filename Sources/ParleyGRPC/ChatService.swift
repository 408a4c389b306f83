import GRPCCore
import GRPCProtobuf
import Logging
import NIOCore
import ParleyCore
import SwiftProtobuf

/// `chat.v1.ChatService`: the gRPC transport. Every RPC goes through the same `Engine` as the
/// WebSocket, SSE and HTTP transports; this type only translates protobuf to engine calls.
///
/// The methods are registered by hand rather than through the generated service protocol so
/// that the streaming RPCs can write events encoded once per room (`EncodedEventSerializer`).
public struct ChatService: RegistrableRPCService {
    public struct Settings: Sendable {
        public var limits: Limits
        /// How long a `Chat` stream without `authorization` metadata has to send `connect`.
        public var handshakeTimeout: Duration
        /// How long a stream whose token expired has to send `connect` with a fresh one.
        public var refreshGrace: Duration

        public init(limits: Limits, handshakeTimeout: Duration, refreshGrace: Duration = .seconds(30)) {
            self.limits = limits
            self.handshakeTimeout = handshakeTimeout
            self.refreshGrace = refreshGrace
        }
    }

    let engine: Engine
    let authenticator: any Authenticator
    let settings: Settings
    let logger: Logger
    /// The streams' handshake and expiry deadlines run on it.
    let clock: any ParleyClock

    public init(engine: Engine, authenticator: any Authenticator, settings: Settings, logger: Logger, clock: any ParleyClock) {
        self.engine = engine
        self.authenticator = authenticator
        self.settings = settings
        self.logger = logger
        self.clock = clock
    }

    public func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
        typealias Method = Chat_V1_ChatService.Method
        // Reads draw on the caller's budget (user, or address when anonymous; API keys are
        // not limited); SendMessage on the publish rates.
        let defaultLimit = settings.limits.defaultHistoryLimit
        unary(Method.GetUser.descriptor, on: &router, budget: { _ in nil }, getUser)
        unary(Method.SendMessage.descriptor, on: &router, sendMessage)
        unary(Method.GetHistory.descriptor, on: &router, budget: { $0.hasLimit ? Int($0.limit) : defaultLimit }, getHistory)
        unary(Method.GetPresence.descriptor, on: &router, budget: { _ in nil }, getPresence)
        router.registerHandler(
            forMethod: Method.JoinChat.descriptor,
            deserializer: LimitedDeserializer<Chat_V1_JoinRequest>(maxBytes: settings.limits.maxFrameBytes),
            serializer: EncodedEventSerializer()
        ) { request, context in
            let single = try await ServerRequest(stream: request)
            return await joinChat(single.message, metadata: single.metadata, peer: context.remotePeer)
        }
        registerAttachmentMethods(with: &router)
        router.registerHandler(
            forMethod: Method.Chat.descriptor,
            deserializer: LimitedDeserializer<Chat_V1_ChatCommand>(maxBytes: settings.limits.maxFrameBytes),
            serializer: EncodedEventSerializer()
        ) { request, context in
            await chat(request, peer: context.remotePeer)
        }
    }

    private func unary<Input: SwiftProtobuf.Message, Output: SwiftProtobuf.Message, Transport: ServerTransport>(
        _ descriptor: MethodDescriptor,
        on router: inout RPCRouter<Transport>,
        budget: (@Sendable (Input) -> Int?)? = nil,
        _ body: @escaping @Sendable (Input, Metadata, _ reader: Identity?) async throws -> Output
    ) {
        router.registerHandler(
            forMethod: descriptor,
            deserializer: LimitedDeserializer<Input>(maxBytes: settings.limits.maxFrameBytes),
            serializer: ProtobufSerializer<Output>()
        ) { request, context in
            let single = try await ServerRequest(stream: request)
            do {
                // A read is charged to its caller, whose identity the method then uses as is.
                var charged: Identity?
                if let budget {
                    let reader = try await reader(single.metadata)
                    try engine.charge(
                        reader: reader, anonymous: Self.bearerToken(single.metadata) == nil,
                        address: StreamConnection.address(ofPeer: context.remotePeer), historyLimit: budget(single.message)
                    )
                    charged = reader
                }
                return StreamingServerResponse(single: ServerResponse(message: try await body(single.message, single.metadata, charged)))
            } catch {
                return StreamingServerResponse(error: failure(error))
            }
        }
    }

    /// Counts an error and turns it into the status the call ends with.
    func failure(_ error: any Error) -> RPCError {
        if let error = error as? ParleyError {
            engine.metrics.error(error.code)
        } else if !(error is RPCError) {
            logger.error("gRPC call failed", metadata: ["error": "\(error)"])
            engine.metrics.error(.internal)
        }
        return ParleyError.rpcError(for: error)
    }

    // MARK: Authentication

    /// The credential of `authorization: Bearer <JWT or API key>`.
    static func bearerToken(_ metadata: Metadata) -> String? {
        metadata[stringValues: "authorization"].lazy.compactMap(BearerToken.parse).first
    }

    /// The identity of a call that acts as `user` (empty: the credential's own user). A
    /// backend (API key) acts as the user it names, which it must name.
    func identity(_ metadata: Metadata, user: String) async throws(ParleyError) -> Identity {
        let identity = try await authenticator.authenticate(token: Self.bearerToken(metadata), user: user.nonEmpty)
        return try identity.acting(as: user, field: "user_id", limits: settings.limits)
    }

    /// The identity a read was charged to, or else the one its metadata carries.
    func readerIdentity(_ charged: Identity?, _ metadata: Metadata) async throws(ParleyError) -> Identity {
        if let charged { return charged }
        return try await reader(metadata)
    }

    /// The identity of a read-only call: in open mode anyone may read.
    func reader(_ metadata: Metadata) async throws(ParleyError) -> Identity {
        let token = Self.bearerToken(metadata)
        if token == nil, authenticator.isOpen { return Identity(user: "reader", isBackend: true) }
        return try await authenticator.authenticate(token: token, user: nil)
    }

    // MARK: Unary RPCs

    @Sendable func getUser(_ request: Chat_V1_GetUserRequest, metadata: Metadata, reader: Identity?) async throws -> Chat_V1_GetUserResponse {
        let rooms = try await engine.userRooms(try await readerIdentity(reader, metadata), user: request.userID)
        guard !rooms.isEmpty else { throw ParleyError(.notFound, "user \(request.userID) is not online") }
        return .with {
            $0.user = request.userID
            $0.online = true
            $0.rooms = rooms
        }
    }

    @Sendable func sendMessage(_ request: Chat_V1_ChatMessage, metadata: Metadata, reader _: Identity?) async throws -> Chat_V1_MessageAck {
        let identity = try await authenticator.authenticate(token: Self.bearerToken(metadata), user: request.senderID.nonEmpty)
        let clientId = request.hasClientID ? request.clientID : nil
        // A change names its kind and target; the ack's message is then the changed message.
        if let kind = request.kind.kind, kind.isModeration {
            let until = request.hasUntil ? Timestamp(milliseconds: Int64(request.until.seconds) * 1000 + Int64(request.until.nanos / 1_000_000)) : nil
            let result = try await engine.moderate(
                identity, as: request.senderID.nonEmpty, room: request.roomID, user: request.targetID, action: kind,
                duration: until.map { .milliseconds($0.milliseconds - Timestamp.now.milliseconds) },
                reason: request.content.nonEmpty, clientId: clientId
            )
            return .with {
                $0.message = Chat_V1_ChatMessage(result.message)
                $0.duplicate = result.duplicate
            }
        }
        let action: MessageChange.Action? = switch request.kind {
        case .message, .UNRECOGNIZED, .kick, .mute, .unmute, .ban, .unban: nil
        case .edit: .edit
        case .delete: .delete
        case .react: .react(.add)
        case .unreact: .react(.remove)
        }
        if let action {
            let result = try await engine.change(
                identity, as: request.senderID.nonEmpty, room: request.roomID, target: request.targetID, action: action,
                content: request.content, clientId: clientId
            )
            return .with {
                $0.message = Chat_V1_ChatMessage(result.target ?? result.message)
                $0.duplicate = result.duplicate
            }
        }
        let result = try await engine.publish(
            identity, as: request.senderID.nonEmpty, room: request.roomID, content: request.content,
            clientId: clientId, replyTo: request.hasReplyTo ? request.replyTo : nil, attachments: request.attachmentIds
        )
        return .with {
            $0.message = Chat_V1_ChatMessage(result.message)
            $0.duplicate = result.duplicate
        }
    }

    @Sendable func getHistory(_ request: Chat_V1_HistoryRequest, metadata: Metadata, reader: Identity?) async throws -> Chat_V1_HistoryResponse {
        try await Chat_V1_HistoryResponse(history(request, identity: readerIdentity(reader, metadata)))
    }

    func history(_ request: Chat_V1_HistoryRequest, identity: Identity) async throws -> HistoryPage {
        try await engine.history(
            identity, room: request.roomID,
            before: request.hasBeforeSeq ? request.beforeSeq : nil,
            after: request.hasAfterSeq ? request.afterSeq : nil,
            limit: request.hasLimit ? Int(request.limit) : nil
        )
    }

    @Sendable func getPresence(_ request: Chat_V1_PresenceRequest, metadata: Metadata, reader: Identity?) async throws -> Chat_V1_PresenceResponse {
        return Chat_V1_PresenceResponse(try await engine.presence(
            readerIdentity(reader, metadata), room: request.roomID,
            after: request.hasAfterUser ? request.afterUser : nil, limit: request.hasLimit ? Int(request.limit) : nil
        ))
    }

    // MARK: Streaming RPCs

    func joinChat(_ request: Chat_V1_JoinRequest, metadata: Metadata, peer: String) async -> StreamingServerResponse<ByteBuffer> {
        let stream: StreamConnection
        let identity: Identity
        do {
            identity = try await self.identity(metadata, user: request.userID)
            stream = try StreamConnection(service: self, peer: peer)
        } catch {
            return StreamingServerResponse(error: failure(error))
        }
        return StreamingServerResponse { writer in
            try await stream.serve(writer, identity: identity, room: request.roomID, since: request.hasSinceSeq ? request.sinceSeq : nil)
            return [:]
        }
    }

    func chat(_ request: StreamingServerRequest<Chat_V1_ChatCommand>, peer: String) async -> StreamingServerResponse<ByteBuffer> {
        let stream: StreamConnection
        var identity: Identity?
        do {
            if Self.bearerToken(request.metadata) != nil {
                identity = try await authenticator.authenticate(token: Self.bearerToken(request.metadata), user: nil)
            }
            stream = try StreamConnection(service: self, peer: peer)
        } catch {
            return StreamingServerResponse(error: failure(error))
        }
        return StreamingServerResponse { [identity] writer in
            try await stream.serveCommands(writer, identity: identity, commands: request.messages)
            return [:]
        }
    }
}

extension String {
    var nonEmpty: String? { isEmpty ? nil : self }
}
