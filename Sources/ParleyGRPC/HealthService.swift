import GRPCCore
import GRPCProtobuf
import ParleyCore

/// `grpc.health.v1.Health` for load balancers and probes. The server as a whole (service "")
/// and `chat.v1.ChatService` are SERVING while the engine accepts sessions and every backend
/// answers (the checks of `/readyz`: the store, and Redis in cluster mode), NOT_SERVING
/// otherwise; during shutdown `Watch` reports NOT_SERVING and then ends with UNAVAILABLE so
/// that the server can stop.
public struct HealthService: Grpc_Health_V1_Health.ServiceProtocol {
    typealias Status = Grpc_Health_V1_HealthCheckResponse.ServingStatus
    static let services: Set<String> = ["", "chat.v1.ChatService"]

    let engine: Engine
    /// True when every backend answers (bounded in time by the caller).
    let backendsUp: @Sendable () async -> Bool
    /// How often `Watch` looks for a change.
    let pollInterval: Duration

    public init(
        engine: Engine, pollInterval: Duration = .milliseconds(250),
        backendsUp: @escaping @Sendable () async -> Bool
    ) {
        self.engine = engine
        self.pollInterval = pollInterval
        self.backendsUp = backendsUp
    }

    func status() async -> Status {
        if engine.isDraining { return .notServing }
        return await backendsUp() ? .serving : .notServing
    }

    public func check(
        request: ServerRequest<Grpc_Health_V1_HealthCheckRequest>, context: ServerContext
    ) async throws -> ServerResponse<Grpc_Health_V1_HealthCheckResponse> {
        guard Self.services.contains(request.message.service) else {
            throw RPCError(code: .notFound, message: "unknown service \(request.message.service)")
        }
        let status = await status()
        return ServerResponse(message: .with { $0.status = status })
    }

    public func watch(
        request: ServerRequest<Grpc_Health_V1_HealthCheckRequest>, context: ServerContext
    ) async throws -> StreamingServerResponse<Grpc_Health_V1_HealthCheckResponse> {
        let known = Self.services.contains(request.message.service)
        return StreamingServerResponse { writer in
            guard known else {
                // The spec: report SERVICE_UNKNOWN and keep watching (it may appear later);
                // Parley's set of services never changes, so the call just stays open.
                try await writer.write(.with { $0.status = .serviceUnknown })
                while !Task.isCancelled, !engine.isDraining { try await Task.sleep(for: pollInterval) }
                throw RPCError(code: .unavailable, message: "server shutting down")
            }
            // Backends are polled; the start of shutdown wakes the watch at once, so that
            // NOT_SERVING goes out before the streams end and the server stops.
            try await engine.watchingDrain { drainStarted in
                var last: Status?
                while !Task.isCancelled {
                    // Read once: draining may start while the backends are checked, and the
                    // stream must not end before it has said NOT_SERVING.
                    let draining = engine.isDraining
                    let current = draining ? .notServing : await status()
                    if current != last {
                        try await writer.write(.with { $0.status = current })
                        last = current
                    }
                    if draining { throw RPCError(code: .unavailable, message: "server shutting down") }
                    await drainStarted.wait(upTo: pollInterval)
                }
            }
            return [:]
        }
    }
}
