import Hummingbird
import ParleyCore
import Prometheus

/// `GET /metrics`: the server's registry in Prometheus text format.
struct MetricsRoute {
    let engine: Engine
    let registry: PrometheusCollectorRegistry
    let backends: [BackendCheck]

    func register(on router: Router<some RequestContext>) {
        let gauges = backends.map { backend in
            (backend, registry.makeGauge(
                descriptor: MetricNameDescriptor(metricName: "parley_backend", unitName: "up", helpText: "1 when the backend answers"),
                labels: [("backend", "\(backend.name)")]
            ))
        }
        router.get("metrics") { _, _ -> Response in
            for (backend, gauge) in gauges { gauge.set(to: await backend.isUp() ? 1.0 : 0.0) }
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: .init(bytes: registry.emitToBuffer()))
            )
        }
    }
}

/// Counts every `ParleyError` an HTTP call answers with, by code.
struct ErrorMetricsMiddleware<Context: RequestContext>: RouterMiddleware {
    let metrics: ParleyMetrics

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as ParleyError {
            metrics.error(error.code)
            throw error
        }
    }
}
