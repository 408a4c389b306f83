import Hummingbird
import ParleyCore

/// `/healthz` (the process answers) and `/readyz` (it can serve: storage reachable and not
/// shutting down).
struct HealthRoutes {
    let engine: Engine

    func register(on router: Router<some RequestContext>) {
        router.get("healthz") { _, _ in
            Response.json { $0.object { json in json.key("status"); json.string("ok") } }
        }
        router.get("readyz") { _, _ -> Response in
            let storeReady = await engine.storeIsReachable()
            let ready = storeReady && !engine.isDraining
            return Response.json(ready ? .ok : .serviceUnavailable) { json in
                json.object { json in
                    json.key("status"); json.string(ready ? "ready" : "unavailable")
                    json.key("store"); json.string(storeReady ? "ok" : "unavailable")
                    json.key("draining"); json.bool(engine.isDraining)
                }
            }
        }
    }
}
