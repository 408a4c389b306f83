import Hummingbird
import HummingbirdWebSocket
import NIOCore

/// Request context of every route: Hummingbird's core storage, WebSocket upgrade support, and
/// the connection's channel, so that a long-lived response (SSE) learns at once when its client
/// goes away.
struct ParleyRequestContext: RequestContext, WebSocketRequestContext {
    var coreContext: CoreRequestContextStorage
    let webSocket: WebSocketHandlerReference<ParleyRequestContext>
    let channel: any Channel

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        webSocket = .init()
        channel = source.channel
    }
}
