import Hummingbird
import ParleyCore

/// `/healthz` (the process answers) and `/readyz` (it can serve: every backend answers and it
/// is not shutting down; the body gives each backend's state).
struct HealthRoutes {
    let engine: Engine
    let backends: [BackendCheck]

    func register(on router: Router<some RequestContext>) {
        router.get("healthz") { _, _ in
            Response.json { $0.object { json in json.key("status"); json.string("ok") } }
        }
        router.get("readyz") { _, _ -> Response in
            var states: [(StaticString, Bool)] = []
            for backend in backends { states.append((backend.name, await backend.isUp())) }
            let storeReady = states.first?.1 ?? true
            let ready = states.allSatisfy(\.1) && !engine.isDraining
            return Response.json(ready ? .ok : .serviceUnavailable) { json in
                json.object { json in
                    json.key("status"); json.string(ready ? "ready" : "unavailable")
                    json.key("store"); json.string(storeReady ? "ok" : "unavailable")
                    json.key("backends")
                    json.object { json in
                        for (name, up) in states { json.key(name); json.string(up ? "up" : "down") }
                    }
                    json.key("draining"); json.bool(engine.isDraining)
                }
            }
        }
    }
}
