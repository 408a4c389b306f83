import Crypto
import Foundation
import Logging
@testable import ParleyCore
import ServiceLifecycle
import Synchronization
import Testing

@Suite("Web Push")
struct WebPushTests {
    static func bytes(_ base64url: String) -> [UInt8] { Base64.decode(base64url)! }

    @Test("aes128gcm encryption matches RFC 8291's worked example byte for byte")
    func rfc8291Example() throws {
        // RFC 8291, section 5 and appendix A.
        let serverKey = try P256.KeyAgreement.PrivateKey(rawRepresentation: Self.bytes("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"))
        #expect(Base64.encode(Array(serverKey.publicKey.x963Representation), url: true)
            == "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8")
        let body = try WebPushEncryption.encrypt(
            Array("When I grow up, I want to be a watermelon".utf8),
            p256dh: Self.bytes("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"),
            auth: Self.bytes("BTBZMqHH6r4Tts7J_aSIgg"), salt: Self.bytes("DGv6ra1nlYgDCS1FRnbzlw"), serverKey: serverKey
        )
        #expect(Base64.encode(body, url: true) == """
            DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_\
            yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN
            """)
    }

    @Test("base64 decodes both alphabets with or without padding and refuses anything else")
    func base64() {
        let data: [UInt8] = [0xFB, 0xFF, 0x01, 0x02, 0x03]
        #expect(Base64.encode(data) == "+/8BAgM=")
        #expect(Base64.encode(data, url: true) == "-_8BAgM")
        #expect(Base64.decode("+/8BAgM=") == data && Base64.decode("-_8BAgM") == data)
        for bad in ["a", "ab=c", "a*bc", "abcde", "ab==="] { #expect(Base64.decode(bad) == nil, "\(bad)") }
        for count in 0..<40 {
            let random = (0..<count).map { _ in UInt8.random(in: 0...255) }
            #expect(Base64.decode(Base64.encode(random, url: true)) == random)
        }
    }

    @Test("subscriptions may point only at the push services allowed: browsers' by default, never user info or other ports")
    func services() throws {
        let browsers = PushServices.browsers
        #expect(browsers.allows("https://fcm.googleapis.com/fcm/send/abc"))
        #expect(browsers.allows("https://web.push.apple.com/QGuQy"))
        #expect(browsers.allows("https://wns2-by3p.notify.windows.com/w/?token=x"))
        #expect(browsers.allows("https://updates.push.services.mozilla.com/wpush/v2/x"))
        for denied in [
            "http://fcm.googleapis.com/x", "https://fcm.googleapis.com:8443/x", "https://evil.com/fcm.googleapis.com",
            "https://fcm.googleapis.com@evil.com/x", "https://push.apple.com.evil.com/x", "https://notify.windows.com/x",
            "https://127.0.0.1/x", "ftp://fcm.googleapis.com/x", "https://[::1]/x",
        ] {
            #expect(!browsers.allows(denied), "\(denied)")
        }
        let local = PushServices(patterns: ["http://127.0.0.1:8123"])
        #expect(local.allows("http://127.0.0.1:8123/push/1") && !local.allows("http://127.0.0.1:8124/push/1"))
        #expect(PushServices.origin(of: "https://FCM.googleapis.com:443/x") == "https://fcm.googleapis.com")
        #expect(PushServices.origin(of: "http://127.0.0.1:8123/p") == "http://127.0.0.1:8123")

        let key = Base64.encode(Array(P256.KeyAgreement.PrivateKey().publicKey.x963Representation), url: true)
        let auth = Base64.encode([UInt8](repeating: 7, count: 16), url: true)
        let ok = try PushSubscription.checked(user: "bob", endpoint: "http://127.0.0.1:8123/p", p256dh: key, auth: auth, services: local)
        #expect(ok.p256dh.count == 65 && ok.auth.count == 16)
        func code(_ endpoint: String, _ key: String, _ auth: String) -> ParleyError.Code? {
            do {
                _ = try PushSubscription.checked(user: "bob", endpoint: endpoint, p256dh: key, auth: auth, services: local)
                return nil
            } catch { return error.code }
        }
        #expect(code("https://fcm.googleapis.com/x", key, auth) == .forbidden)
        #expect(code("not a url", key, auth) == .badRequest)
        #expect(code("http://127.0.0.1:8123/p", "BAAA", auth) == .badRequest)
        // 65 bytes starting with 4 that are not a point on the curve.
        #expect(code("http://127.0.0.1:8123/p", Base64.encode([4] + [UInt8](repeating: 1, count: 64), url: true), auth) == .badRequest)
        #expect(code("http://127.0.0.1:8123/p", key, "AAAA") == .badRequest)
        #expect(code("http://127.0.0.1:8123/" + String(repeating: "a", count: 1100), key, auth) == .badRequest)
    }

    @Test("the VAPID header is an ES256 JWT for the push service's origin, signed by the key browsers subscribed with")
    func vapid() throws {
        let key = VAPIDKey(secret: (0..<32).map { UInt8($0) })
        #expect(key.publicKey == VAPIDKey(secret: (0..<32).map { UInt8($0) }).publicKey)
        let header = try key.authorization(
            endpoint: "https://fcm.googleapis.com/fcm/send/x", contact: "mailto:ops@example.com", expiry: Timestamp(milliseconds: 1_900_000_000_000)
        )
        let claims = try Self.verifyVAPID(header, publicKey: key.publicKey)
        #expect(claims["aud"] as? String == "https://fcm.googleapis.com")
        #expect(claims["exp"] as? Int == 1_900_000_000)
        #expect(claims["sub"] as? String == "mailto:ops@example.com")
    }

    /// Checks a `vapid t=..., k=...` header against `publicKey`; returns the JWT's claims.
    static func verifyVAPID(_ header: String, publicKey: [UInt8]) throws -> [String: Any] {
        let parts = header.dropFirst("vapid ".count).split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        let token = try #require(parts.first { $0.hasPrefix("t=") }).dropFirst(2)
        let k = try #require(parts.first { $0.hasPrefix("k=") }).dropFirst(2)
        #expect(Base64.decode(k) == publicKey)
        let pieces = token.split(separator: ".")
        try #require(pieces.count == 3)
        let verifier = try P256.Signing.PublicKey(x963Representation: publicKey)
        let rawSignature = try #require(Base64.decode(pieces[2]))
        let signature = try P256.Signing.ECDSASignature(rawRepresentation: rawSignature)
        #expect(verifier.isValidSignature(signature, for: Array("\(pieces[0]).\(pieces[1])".utf8)))
        let headBytes = try #require(Base64.decode(pieces[0]))
        let head = try JSONSerialization.jsonObject(with: Data(headBytes)) as? [String: Any]
        #expect(head?["alg"] as? String == "ES256" && head?["typ"] as? String == "JWT")
        let claimBytes = try #require(Base64.decode(pieces[1]))
        let claims = try JSONSerialization.jsonObject(with: Data(claimBytes)) as? [String: Any]
        return try #require(claims)
    }

    // MARK: The notifier

    /// A browser: its keys, and the decryption of what it is sent (RFC 8291, written from the
    /// receiving side).
    struct Browser {
        let key = P256.KeyAgreement.PrivateKey()
        let auth = (0..<16).map { _ in UInt8.random(in: 0...255) }
        let endpoint: String

        func subscription(_ user: String) -> PushSubscription {
            PushSubscription(user: user, endpoint: endpoint, p256dh: Array(key.publicKey.x963Representation), auth: auth)
        }

        func decrypt(_ body: [UInt8]) throws -> [String: Any] {
            let salt = Array(body[0..<16])
            let idLength = Int(body[20])
            let senderKey = Array(body[21..<(21 + idLength)])
            let sealed = Array(body[(21 + idLength)...])
            let shared = try key.sharedSecretFromKeyAgreement(with: P256.KeyAgreement.PublicKey(x963Representation: senderKey))
            let info = Array("WebPush: info".utf8) + [0] + Array(key.publicKey.x963Representation) + senderKey
            let ikm = shared.hkdfDerivedSymmetricKey(using: SHA256.self, salt: auth, sharedInfo: info, outputByteCount: 32)
            let cek = HKDF<SHA256>.deriveKey(inputKeyMaterial: ikm, salt: salt, info: Array("Content-Encoding: aes128gcm".utf8) + [0], outputByteCount: 16)
            let nonce = HKDF<SHA256>.deriveKey(inputKeyMaterial: ikm, salt: salt, info: Array("Content-Encoding: nonce".utf8) + [0], outputByteCount: 12)
            let box = try AES.GCM.SealedBox(
                nonce: AES.GCM.Nonce(data: nonce.withUnsafeBytes { Array($0) }), ciphertext: sealed.dropLast(16), tag: sealed.suffix(16)
            )
            var plain = Array(try AES.GCM.open(box, using: cek))
            #expect(plain.last == 2, "the last record's delimiter")
            plain.removeLast()
            let payload = try JSONSerialization.jsonObject(with: Data(plain)) as? [String: Any]
            return try #require(payload)
        }
    }

    /// A push service whose answers the test scripts, one per request (then 201).
    final class FakeService: PushTransport {
        let answers: Mutex<[String: [PushResponse]]>
        let received = Mutex<[PushRequest]>([])
        let arrivals = AsyncStream<PushRequest>.makeStream()

        init(answers: [String: [PushResponse]] = [:]) {
            self.answers = Mutex(answers)
        }

        func send(_ request: PushRequest) async throws -> PushResponse {
            received.withLock { $0.append(request) }
            arrivals.continuation.yield(request)
            return answers.withLock { answers in
                answers[request.endpoint]?.isEmpty == false ? answers[request.endpoint]!.removeFirst() : PushResponse(status: 201)
            }
        }

        /// The next `count` requests, within 5 s.
        func next(_ count: Int) async throws -> [PushRequest] {
            try await withTimeout(.seconds(5)) {
                var got: [PushRequest] = []
                for await request in self.arrivals.stream {
                    got.append(request)
                    if got.count == count { break }
                }
                return got
            }
        }
    }

    struct Rig {
        let store = MemoryMessageStore()
        let presence = MemoryPresenceStore()
        let clock = ManualClock()
        let service: FakeService
        let notifier: PushNotifier

        init(answers: [String: [PushResponse]] = [:]) {
            service = FakeService(answers: answers)
            var configuration = PushNotifier.Configuration()
            configuration.services = PushServices(patterns: ["*"])
            configuration.contact = "mailto:ops@example.com"
            notifier = PushNotifier(store: store, presence: presence, transport: service, configuration: configuration, clock: clock)
        }

        /// Waits (bounded) until the notifier sleeps on the clock, then moves it past the wait.
        func advanceWhenWaiting(by duration: Duration) async throws {
            for _ in 0..<500 where clock.pendingTimers == 0 { try await Task.sleep(for: .milliseconds(2)) }
            try #require(clock.pendingTimers > 0, "the notifier never waited")
            clock.advance(by: duration)
        }
    }

    func dm(to user: String = "bob") -> PushNotification {
        PushNotification(kind: .direct, user: user, room: "dm:alice:bob", from: "alice", body: "hi \"bob\"", message: "m1", seq: 3)
    }

    @Test("a push goes to each subscription, encrypted for it, with TTL, urgency and a VAPID JWT for its service")
    func sendsToEverySubscription() async throws {
        let rig = Rig()
        let phone = Browser(endpoint: "https://push-a.example/1")
        let laptop = Browser(endpoint: "https://push-b.example/2")
        try await rig.store.addPushSubscription(phone.subscription("bob"))
        try await rig.store.addPushSubscription(laptop.subscription("bob"))
        await rig.notifier.deliver(dm())
        let requests = rig.service.received.withLock { $0 }.sorted { $0.endpoint < $1.endpoint }
        try #require(requests.count == 2)
        let key = try await rig.notifier.vapidKey().publicKey
        for (request, browser) in zip(requests, [phone, laptop]) {
            let headers = Dictionary(uniqueKeysWithValues: request.headers.map { ($0.name, $0.value) })
            #expect(headers["TTL"] == "86400" && headers["Urgency"] == "high" && headers["Content-Encoding"] == "aes128gcm")
            let claims = try Self.verifyVAPID(try #require(headers["Authorization"]), publicKey: key)
            #expect(claims["aud"] as? String == PushServices.origin(of: browser.endpoint))
            let payload = try browser.decrypt(request.body)
            #expect(payload["type"] as? String == "dm" && payload["from"] as? String == "alice" && payload["room"] as? String == "dm:alice:bob")
            #expect(payload["body"] as? String == "hi \"bob\"" && payload["id"] as? String == "m1" && payload["seq"] as? Int == 3)
        }
        // A call lives as long as it rings; a mention is not urgent.
        await rig.notifier.deliver(PushNotification(kind: .call, user: "bob", room: "dm:alice:bob", from: "alice", call: "c1", video: true))
        await rig.notifier.deliver(PushNotification(kind: .mention, user: "bob", room: "general", from: "alice", body: "@bob look"))
        let later = rig.service.received.withLock { Array($0.dropFirst(2)) }.filter { $0.endpoint == phone.endpoint }
        try #require(later.count == 2)
        let call = try phone.decrypt(later[0].body)
        #expect(call["type"] as? String == "call" && call["call"] as? String == "c1" && call["video"] as? Bool == true)
        #expect(later[0].headers.contains { $0 == ("TTL", "30") } && later[0].headers.contains { $0 == ("Urgency", "high") })
        #expect(later[1].headers.contains { $0 == ("Urgency", "normal") })
    }

    @Test("nothing is pushed to a user with a visible session, nor for a muted room, nor when all are muted")
    func notNeeded() async throws {
        let rig = Rig()
        try await rig.store.addPushSubscription(Browser(endpoint: "https://push.example/1").subscription("bob"))
        try await rig.presence.setVisible(user: "bob", session: "i-1", true)
        await rig.notifier.deliver(dm())
        #expect(rig.service.received.withLock { $0.count } == 0)
        try await rig.presence.setVisible(user: "bob", session: "i-1", false)
        try await rig.store.setPushMutes(user: "bob", rooms: ["dm:alice:bob"])
        await rig.notifier.deliver(dm())
        #expect(rig.service.received.withLock { $0.count } == 0)
        await rig.notifier.deliver(PushNotification(kind: .mention, user: "bob", room: "general", from: "alice", body: "@bob"))
        #expect(rig.service.received.withLock { $0.count } == 1)
        try await rig.store.setPushMutes(user: "bob", rooms: [PushSettings.everyRoom])
        await rig.notifier.deliver(PushNotification(kind: .mention, user: "bob", room: "general", from: "alice", body: "@bob"))
        #expect(rig.service.received.withLock { $0.count } == 1)
    }

    @Test("a subscription the push service answers 404 or 410 for is deleted; other refusals are given up at once")
    func goneSubscriptions() async throws {
        let gone = Browser(endpoint: "https://push.example/gone")
        let missing = Browser(endpoint: "https://push.example/missing")
        let refused = Browser(endpoint: "https://push.example/refused")
        let rig = Rig(answers: [
            gone.endpoint: [PushResponse(status: 410)], missing.endpoint: [PushResponse(status: 404)], refused.endpoint: [PushResponse(status: 413)],
        ])
        for browser in [gone, missing, refused] { try await rig.store.addPushSubscription(browser.subscription("bob")) }
        await rig.notifier.deliver(dm())
        #expect(try await rig.store.pushSubscriptions(user: "bob").map(\.endpoint) == [refused.endpoint])
        #expect(rig.service.received.withLock { $0.count } == 3)
        #expect(rig.clock.pendingTimers == 0)
    }

    @Test("429 and 5xx are retried after the service's Retry-After, else with exponential backoff, and given up after the attempts")
    func retries() async throws {
        let browser = Browser(endpoint: "https://push.example/1")
        let rig = Rig(answers: [browser.endpoint: [
            PushResponse(status: 429, retryAfter: .seconds(7)), PushResponse(status: 503), PushResponse(status: 500), PushResponse(status: 201),
        ]])
        try await rig.store.addPushSubscription(browser.subscription("bob"))
        let delivery = Task { await rig.notifier.deliver(dm()) }
        _ = try await rig.service.next(1)
        // Not before the 7 s the service asked for.
        try await rig.advanceWhenWaiting(by: .seconds(6.9))
        #expect(rig.service.received.withLock { $0.count } == 1)
        rig.clock.advance(by: .milliseconds(100))
        _ = try await rig.service.next(1)
        // Then 2 s (the second attempt's backoff) plus up to a quarter, then 4 s plus up to a quarter.
        try await rig.advanceWhenWaiting(by: .seconds(2.5))
        _ = try await rig.service.next(1)
        try await rig.advanceWhenWaiting(by: .seconds(5))
        let last = try await rig.service.next(1)
        await delivery.value
        #expect(rig.service.received.withLock { $0.count } == 4)
        #expect(try browser.decrypt(last[0].body)["id"] as? String == "m1")
        #expect(try await rig.store.pushSubscriptions(user: "bob").count == 1)

        // Always 503: five attempts, then given up; the subscription stays.
        let failing = Rig(answers: [browser.endpoint: Array(repeating: PushResponse(status: 503), count: 10)])
        try await failing.store.addPushSubscription(browser.subscription("bob"))
        let giveUp = Task { await failing.notifier.deliver(dm()) }
        for _ in 0..<4 { try await failing.advanceWhenWaiting(by: .seconds(60)) }
        await giveUp.value
        #expect(failing.service.received.withLock { $0.count } == 5)
        #expect(try await failing.store.pushSubscriptions(user: "bob").count == 1)
    }

    @Test("a call is not retried past its ring time")
    func callsExpire() async throws {
        let browser = Browser(endpoint: "https://push.example/1")
        let rig = Rig(answers: [browser.endpoint: [PushResponse(status: 429, retryAfter: .seconds(40))]])
        try await rig.store.addPushSubscription(browser.subscription("bob"))
        await rig.notifier.deliver(PushNotification(kind: .call, user: "bob", room: "dm:alice:bob", from: "alice", call: "c1"))
        #expect(rig.service.received.withLock { $0.count } == 1)
        #expect(rig.clock.pendingTimers == 0)
    }

    @Test("the queue hands pushes to the running notifier, and drops what does not fit")
    func queue() async throws {
        let browser = Browser(endpoint: "https://push.example/1")
        let rig = Rig()
        try await rig.store.addPushSubscription(browser.subscription("bob"))
        let running = Task { try await rig.notifier.run() }
        for n in 0..<3 { rig.notifier.enqueue(PushNotification(kind: .direct, user: "bob", room: "dm:alice:bob", from: "alice", body: "\(n)")) }
        let got = try await rig.service.next(3)
        #expect(Set(try got.map { try browser.decrypt($0.body)["body"] as? String }) == ["0", "1", "2"])
        running.cancel()
    }

    @Test("shutdown ends a retry's wait at once, and what is queued goes out once more")
    func shutdownDuringRetry() async throws {
        let browser = Browser(endpoint: "https://push.example/1")
        let rig = Rig(answers: [browser.endpoint: Array(repeating: PushResponse(status: 503), count: 10)])
        try await rig.store.addPushSubscription(browser.subscription("bob"))
        let group = ServiceGroup(configuration: .init(services: [.init(service: rig.notifier)], logger: Logger(label: "test")))
        let running = Task { try await group.run() }
        rig.notifier.enqueue(dm())
        _ = try await rig.service.next(1)
        for _ in 0..<500 where rig.clock.pendingTimers == 0 { try await Task.sleep(for: .milliseconds(2)) }
        try #require(rig.clock.pendingTimers == 1)
        await group.triggerGracefulShutdown()
        // The clock never moves: only the shutdown can end the wait.
        try await withTimeout(.seconds(5)) { try await running.value }
        #expect(rig.service.received.withLock { $0.count } == 1)
        #expect(rig.clock.pendingTimers == 0)
    }
}
