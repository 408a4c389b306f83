import Hummingbird
import NIOCore

/// Request context of every route: Hummingbird's core storage and the connection's channel, so
/// that a long-lived response (SSE) learns at once when its client goes away.
struct ParleyRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let channel: any Channel

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }
}
