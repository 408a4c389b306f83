import Logging
import NIOCore

/// Matches replies to requests in the order the requests were written (Redis answers in order),
/// hands pub/sub messages to `onMessage`, times requests out, and fails every waiting request
/// when the connection ends. Lives on its channel's event loop and is only touched there.
final class RedisChannelHandler: ChannelInboundHandler {
    typealias InboundIn = RESPToken
    typealias OutboundOut = ByteBuffer

    private struct Request {
        /// Nil once the caller gave up (timeout, cancellation): the reply is still awaited, to keep
        /// later replies matched, and then discarded.
        var promise: EventLoopPromise<RESPToken>?
        /// For (P)SUBSCRIBE and (P)UNSUBSCRIBE: confirmations still expected. 0 for other commands.
        var confirmations: Int
        var timeout: Scheduled<Void>?
    }

    private var context: ChannelHandlerContext?
    private var requests = CircularBuffer<Request>(initialCapacity: 16)
    /// The id of `requests.first`; ids grow by one per request, so an id is also a position.
    private var firstID: UInt64 = 0
    /// Subscriptions the server reported in its last confirmation.
    private(set) var subscriptionCount = 0
    /// Why the connection ended; new requests fail with it at once.
    private(set) var closeReason: RedisError?
    /// Set once HELLO 3 succeeded. In RESP2 a subscribed connection's messages are plain arrays.
    var isRESP3 = false
    /// Receives every pub/sub message, on the event loop, in arrival order.
    var onMessage: ((RedisMessage) -> Void)?
    private let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        failAll(.connectionClosed())
        self.context = nil
    }

    /// Writes `command` and queues `promise` for its reply. `confirmations` > 0 marks a pub/sub
    /// command, whose reply is that many confirmations. Returns the id to `abandon` it by.
    @discardableResult
    func enqueue(
        _ command: RESPCommand,
        confirmations: Int = 0,
        promise: EventLoopPromise<RESPToken>,
        timeout: TimeAmount?,
        flush: Bool = true
    ) -> UInt64 {
        guard let context, closeReason == nil else {
            promise.fail(closeReason ?? .connectionClosed())
            return .max
        }
        let id = firstID + UInt64(requests.count)
        var request = Request(promise: promise, confirmations: confirmations, timeout: nil)
        if let timeout {
            let name = command.name
            request.timeout = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
                abandon(id, with: RedisError(.timeout, "no reply to \(name) within \(timeout)"))
            }
        }
        requests.append(request)
        context.write(wrapOutboundOut(command.encoded), promise: nil)
        if flush { context.flush() }
        return id
    }

    func flush() {
        context?.flush()
    }

    /// Fails everything still waiting with `reason` and closes the channel.
    func close(reason: RedisError) {
        failAll(reason)
        context?.close(promise: nil)
    }

    /// Fails the request's promise now; its reply, when it comes, is discarded.
    func abandon(_ id: UInt64, with error: RedisError) {
        guard id >= firstID, id - firstID < requests.count else { return }
        let index = requests.index(requests.startIndex, offsetBy: Int(id - firstID))
        guard let promise = requests[index].promise else { return }
        requests[index].promise = nil
        requests[index].timeout?.cancel()
        promise.fail(error)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let token = unwrapInboundIn(data)
        let awaitingConfirmation = (requests.first?.confirmations ?? 0) > 0
        let arraysArePubSub = !isRESP3 && (subscriptionCount > 0 || awaitingConfirmation)
        guard let frame = RedisPubSubFrame(token, arraysArePubSub: arraysArePubSub) else {
            complete(with: token, context: context)
            return
        }
        switch frame {
        case .message(let message):
            onMessage?(message)
        case .confirmation(let count):
            subscriptionCount = count
            guard awaitingConfirmation else { return }  // unsolicited, e.g. a server-side unsubscribe
            requests[requests.startIndex].confirmations -= 1
            if requests[requests.startIndex].confirmations == 0 { complete(with: token, context: context) }
        case .otherPush:
            logger.trace("ignoring push", metadata: ["push": "\(token)"])
        }
    }

    private func complete(with token: RESPToken, context: ChannelHandlerContext) {
        guard let request = requests.popFirst() else {
            let error = RedisError.protocolError("reply without a request: \(token.description.prefix(100))")
            failAll(error)
            context.close(promise: nil)
            return
        }
        firstID += 1
        request.timeout?.cancel()
        guard let promise = request.promise else { return }
        if let message = token.errorMessage {
            promise.fail(RedisError(.serverError, message))
        } else {
            promise.succeed(token)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let reason: RedisError =
            switch error {
            case let error as RedisError: error
            case is ByteToMessageDecoderError.PayloadTooLargeError:
                .protocolError("reply larger than the buffer limit")
            default: .connectionClosed("connection error: \(error)")
            }
        logger.debug("closing connection", metadata: ["error": "\(reason)"])
        failAll(reason)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll(.connectionClosed("connection closed by the server"))
        context.fireChannelInactive()
    }

    private func failAll(_ reason: RedisError) {
        if closeReason == nil { closeReason = reason }
        onMessage = nil
        while let request = requests.popFirst() {
            firstID += 1
            request.timeout?.cancel()
            request.promise?.fail(reason)
        }
    }
}
