import GRPCCore
import GRPCNIOTransportHTTP2
import ParleyGRPC
import Synchronization

typealias ChatClient = Chat_V1_ChatService.Client<HTTP2ClientTransport.Posix>

/// Runs `body` with a real grpc-swift client connected to `port` over loopback.
func withChatClient<T: Sendable>(port: Int, _ body: (ChatClient) async throws -> T) async throws -> T {
    try await withGRPCClient(
        transport: .http2NIOPosix(target: .ipv4(address: "127.0.0.1", port: port), transportSecurity: .plaintext)
    ) { client in
        try await body(Chat_V1_ChatService.Client(wrapping: client))
    }
}

func grpcBearer(_ token: String) -> Metadata { ["authorization": "Bearer \(token)"] }

/// The status code of a failed call, or nil when `body` succeeded.
func grpcStatus(_ body: () async throws -> Void) async -> RPCError.Code? {
    do {
        try await body()
        return nil
    } catch let error as RPCError {
        return error.code
    } catch {
        return .unknown
    }
}

/// A streaming call (`JoinChat` or `Chat`) running in the background: its events land in a
/// queue and its end (status) is recorded. `cancel()` cancels the call as a client would.
final class EventStream: Sendable {
    let events = AsyncQueue<Chat_V1_ChatEvent>()
    private let commands: AsyncStream<Chat_V1_ChatCommand>.Continuation?
    private let ending = AsyncQueue<RPCError?>()
    private let task = Mutex<Task<Void, Never>?>(nil)

    private init(commands: AsyncStream<Chat_V1_ChatCommand>.Continuation?) {
        self.commands = commands
    }

    /// Starts `JoinChat`; the first event is the join ack.
    static func join(
        _ client: ChatClient, room: String, user: String = "", since: Int64? = nil, metadata: Metadata = [:]
    ) -> EventStream {
        let stream = EventStream(commands: nil)
        let request = Chat_V1_JoinRequest.with {
            $0.roomID = room
            $0.userID = user
            if let since { $0.sinceSeq = since }
        }
        stream.run {
            try await client.joinChat(request: ClientRequest(message: request, metadata: metadata)) { response in
                for try await event in response.messages { stream.events.push(event) }
            }
        }
        return stream
    }

    /// Starts `Chat`; send commands with `send`.
    static func chat(_ client: ChatClient, metadata: Metadata = [:]) -> EventStream {
        let (commands, continuation) = AsyncStream.makeStream(of: Chat_V1_ChatCommand.self)
        let stream = EventStream(commands: continuation)
        stream.run {
            let request = StreamingClientRequest(of: Chat_V1_ChatCommand.self, metadata: metadata) { writer in
                for await command in commands { try await writer.write(command) }
            }
            try await client.chat(request: request) { response in
                for try await event in response.messages { stream.events.push(event) }
            }
        }
        return stream
    }

    private func run(_ call: @escaping @Sendable () async throws -> Void) {
        task.withLock {
            $0 = Task {
                do {
                    try await call()
                    self.ending.push(nil)
                } catch let error as RPCError {
                    self.ending.push(error)
                } catch {
                    self.ending.push(RPCError(code: .unknown, message: "\(error)"))
                }
                self.events.finish()
            }
        }
    }

    func send(_ command: Chat_V1_ChatCommand.OneOf_Command, requestID: String = "") {
        sendRaw(.with {
            $0.requestID = requestID
            $0.command = command
        })
    }

    func sendRaw(_ command: Chat_V1_ChatCommand) {
        commands?.yield(command)
    }

    /// Ends the client's half of a `Chat` stream.
    func finishCommands() { commands?.finish() }

    func cancel() {
        commands?.finish()
        task.withLock { $0 }?.cancel()
    }

    func next(timeout: Duration = .seconds(10)) async -> Chat_V1_ChatEvent? {
        await events.pop(timeout: timeout)
    }

    /// The next event that `predicate` accepts, skipping others.
    func expect(
        timeout: Duration = .seconds(10), _ what: String = "event", where predicate: (Chat_V1_ChatEvent) -> Bool
    ) async throws -> Chat_V1_ChatEvent {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            guard let event = await next(timeout: deadline - .now) else { break }
            if predicate(event) { return event }
        }
        throw TestFailure("no \(what) within \(timeout)")
    }

    /// The ack or error answering `requestID`.
    func reply(to requestID: String, timeout: Duration = .seconds(10)) async throws -> Chat_V1_ChatEvent {
        try await expect(timeout: timeout, "reply to \(requestID)") { event in
            switch event.event {
            case .ack(let ack): ack.requestID == requestID
            case .error(let error): error.requestID == requestID
            case .pong(let pong): pong.requestID == requestID
            default: false
            }
        }
    }

    /// Sends a command and waits for its ack's result; an `error` reply throws it.
    func request(_ command: Chat_V1_ChatCommand.OneOf_Command, id: String) async throws -> Chat_V1_Ack.OneOf_Result? {
        send(command, requestID: id)
        let reply = try await reply(to: id)
        if case .error(let error) = reply.event { throw TestFailure("\(id): \(error.reason): \(error.message)") }
        return reply.ack.result
    }

    /// Every `message` event of `room` until `count` arrived.
    func messages(_ count: Int, timeout: Duration = .seconds(20)) async throws -> [Chat_V1_ChatMessage] {
        var messages: [Chat_V1_ChatMessage] = []
        while messages.count < count {
            let event = try await expect(timeout: timeout, "message \(messages.count + 1) of \(count)") {
                if case .message = $0.event { true } else { false }
            }
            messages.append(event.message)
        }
        return messages
    }

    /// How the call ended: `.some(nil)` for OK, `.some(error)` for a status, nil if still open.
    func ended(timeout: Duration = .seconds(10)) async -> RPCError?? {
        await ending.pop(timeout: timeout)
    }
}
