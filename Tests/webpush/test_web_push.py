"""Web Push against a push service started here: subscriptions made the way a browser makes
them (its own P-256 key pair and auth secret), pushes decrypted with ``http_ece`` (an RFC 8291
implementation Parley did not write), the VAPID JWT checked against the key the server hands
out, a 410 answered to see a subscription dropped, a 503 to see it retried, and, with
``PARLEY_TEST_REDIS_URL`` and ``PARLEY_TEST_DATABASE_URL``, two instances that push each event
once and know the sessions visible on each other.

The server runs on its default store (SQLite) unless the cluster is given.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import sys
import time
from pathlib import Path

import aiohttp
import http_ece
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "browser"))

from parley_harness import ParleyServer  # noqa: E402

TIMEOUT = 10
CONTACT = "mailto:push-test@example.com"
REDIS = os.environ.get("PARLEY_TEST_REDIS_URL", "")
DATABASE = os.environ.get("PARLEY_TEST_DATABASE_URL", "")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Browser:
    """A browser's side of a subscription: its key pair and auth secret."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)

    def subscription(self) -> dict:
        public = self.key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        return {"endpoint": self.endpoint, "keys": {"p256dh": b64url(public), "auth": b64url(self.auth)}}

    def decrypt(self, body: bytes) -> dict:
        return json.loads(http_ece.decrypt(body, private_key=self.key, auth_secret=self.auth, version="aes128gcm"))


class PushService:
    """A push service on loopback: records every POST; answers what a test scripted for its path
    (one answer per request), else 201."""

    def __init__(self):
        self.received: list[dict] = []
        self.answers: dict[str, list[tuple[int, dict]]] = {}
        self.arrived = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self):
        app = web.Application()
        app.router.add_post("/push/{name}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def stop(self):
        await self.runner.cleanup()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/push/{name}"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append({"path": request.path, "headers": dict(request.headers), "body": body})
        self.arrived.set()
        scripted = self.answers.get(request.path)
        if scripted:
            status, headers = scripted.pop(0)
            return web.Response(status=status, headers=headers)
        return web.Response(status=201)

    async def wait_for(self, path: str, count: int = 1) -> list[dict]:
        """The first `count` pushes to `path`, waiting up to TIMEOUT for them."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            found = [r for r in self.received if r["path"] == path]
            if len(found) >= count:
                return found[:count]
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no push to {path}: {[r['path'] for r in self.received]}"
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except asyncio.TimeoutError:
                pass


def verify_vapid(header: str, public_key: str, audience: str) -> dict:
    match = re.fullmatch(r"vapid t=([\w-]+\.[\w-]+\.[\w-]+), k=([\w-]+)", header)
    assert match, header
    token, key = match.groups()
    assert key == public_key
    head, claims, signature = token.split(".")
    raw = unb64url(signature)
    assert len(raw) == 64
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    verifier = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(key))
    verifier.verify(der, f"{head}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))  # raises when forged
    assert json.loads(unb64url(head)) == {"typ": "JWT", "alg": "ES256"}
    decoded = json.loads(unb64url(claims))
    assert decoded["aud"] == audience and decoded["sub"] == CONTACT
    assert time.time() < decoded["exp"] <= time.time() + 24 * 3600
    return decoded


class Parley:
    """HTTP calls and WebSocket sessions against one instance, in open mode."""

    def __init__(self, server: ParleyServer, http: aiohttp.ClientSession):
        self.server = server
        self.http = http

    async def call(self, method: str, path: str, *, user: str | None = None, body=None, params=None, expect=200):
        query = dict(params or {})
        if user:
            query["user"] = user
        async with self.http.request(method, self.server.url + path, params=query, json=body) as answer:
            data = await answer.json() if answer.status != 204 else {}
            assert answer.status == expect, f"{method} {path}: {answer.status} {data}"
            return data

    async def subscribe(self, user: str, browser: Browser):
        return await self.call("POST", "/api/push/subscriptions", user=user, body=browser.subscription(), expect=201)

    async def post(self, room: str, content: str, user: str):
        return await self.call("POST", f"/api/rooms/{room}/messages", body={"content": content, "user": user}, expect=201)

    async def metric(self, result: str) -> int:
        async with self.http.get(self.server.url + "/metrics") as answer:
            text = await answer.text()
        match = re.search(r'^parley_pushes_total\{result="%s"\} (\d+)' % result, text, re.M)
        return int(match.group(1)) if match else 0

    async def until_metric(self, result: str, value: int):
        deadline = time.monotonic() + TIMEOUT
        while (current := await self.metric(result)) < value:
            assert time.monotonic() < deadline, f"parley_pushes_total{{result={result}}} stayed at {current}, not {value}"
            await asyncio.sleep(0.05)

    async def session(self, user: str) -> "Session":
        socket = await self.http.ws_connect(self.server.url.replace("http", "ws") + f"/ws?user={user}")
        return Session(socket)


class Session:
    def __init__(self, socket):
        self.socket = socket
        self.next_id = 1
        self.events: list[dict] = []

    async def request(self, event: str, data: dict) -> dict:
        request_id = self.next_id
        self.next_id += 1
        await self.socket.send_json({"event": event, "data": data, "id": request_id})
        while True:
            frame = await asyncio.wait_for(self.socket.receive_json(), TIMEOUT)
            if frame.get("id") == request_id:
                assert frame["event"] == "ack", frame
                return frame["data"]
            self.events.append(frame)

    async def close(self):
        await self.socket.close()


def start_server(tmp_path: Path, push: PushService, name: str, cluster: bool = False) -> ParleyServer:
    env = {"PARLEY_PUSH_SERVICES": f"http://127.0.0.1:{push.port}", "PARLEY_PUSH_CONTACT": CONTACT}
    if cluster:
        env.update({"PARLEY_REDIS_URL": REDIS, "PARLEY_DATABASE_URL": DATABASE})
    data = tmp_path / name
    data.mkdir()
    server = ParleyServer(data, env=env)
    server.start()
    return server


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_direct_messages_mentions_and_calls_reach_a_closed_browser(tmp_path):
    async def main():
        push = PushService()
        await push.start()
        server = start_server(tmp_path, push, "single")
        try:
            async with aiohttp.ClientSession() as http:
                parley = Parley(server, http)
                key = (await parley.call("GET", "/api/push/key"))["publicKey"]
                assert len(unb64url(key)) == 65 and unb64url(key)[0] == 4
                bob, carol = Browser(push.url("bob")), Browser(push.url("carol"))
                await parley.subscribe("bob", bob)
                await parley.subscribe("carol", carol)
                listed = await parley.call("GET", "/api/push/subscriptions", user="bob")
                assert [s["endpoint"] for s in listed["subscriptions"]] == [bob.endpoint]

                # A DM to bob, who has no session at all.
                await parley.post("dm:alice:bob", "are you there?", "alice")
                [first] = await push.wait_for("/push/bob")
                assert first["headers"]["Content-Encoding"] == "aes128gcm"
                assert first["headers"]["TTL"] == "86400" and first["headers"]["Urgency"] == "high"
                verify_vapid(first["headers"]["Authorization"], key, f"http://127.0.0.1:{push.port}")
                payload = bob.decrypt(first["body"])
                assert payload["type"] == "dm" and payload["from"] == "alice" and payload["room"] == "dm:alice:bob"
                assert payload["body"] == "are you there?" and payload["seq"] == 1

                # A mention in a room.
                await parley.post("general", "lunch, @carol?", "alice")
                [mention] = await push.wait_for("/push/carol")
                assert carol.decrypt(mention["body"])["type"] == "mention"
                assert mention["headers"]["Urgency"] == "normal"

                # Bob's tab in front: nothing is pushed. Hidden again: pushed.
                tab = await parley.session("bob")
                assert await tab.request("visibility", {"visible": True}) == {"visible": True}
                await parley.post("dm:alice:bob", "seen it live", "alice")
                await parley.until_metric("not_needed", 1)
                await tab.request("visibility", {"visible": False})
                await parley.post("dm:alice:bob", "now hidden", "alice")
                pushes = await push.wait_for("/push/bob", 2)
                assert bob.decrypt(pushes[1]["body"])["body"] == "now hidden"
                # A visible tab that closes stops counting.
                await tab.request("visibility", {"visible": True})
                await tab.close()

                # Bob mutes the DM room: no push; then mutes all, unmutes the room: still none.
                settings = await parley.call("PUT", "/api/push/settings", user="bob", body={"mutedRooms": ["dm:alice:bob"]})
                assert settings == {"user": "bob", "muteAll": False, "mutedRooms": ["dm:alice:bob"]}
                await parley.post("dm:alice:bob", "muted", "alice")
                await parley.until_metric("not_needed", 2)
                await parley.call("PUT", "/api/push/settings", user="bob", body={"muteAll": True, "mutedRooms": []})
                await parley.post("dm:alice:bob", "all muted", "alice")
                await parley.until_metric("not_needed", 3)
                assert await parley.call("GET", "/api/push/settings", user="bob") == {"user": "bob", "muteAll": True, "mutedRooms": []}
                await parley.call("PUT", "/api/push/settings", user="bob", body={"muteAll": False})

                # A call: bob's browser is told while it rings.
                alice = await parley.session("alice")
                started = await alice.request("call", {"user": "bob"})
                pushes = await push.wait_for("/push/bob", 3)
                ring = bob.decrypt(pushes[2]["body"])
                assert ring["type"] == "call" and ring["call"] == started["call"] and ring["from"] == "alice"
                assert pushes[2]["headers"]["TTL"] == "30" and pushes[2]["headers"]["Urgency"] == "high"
                await alice.close()
                assert len([r for r in push.received if r["path"] == "/push/bob"]) == 3

                # Bad subscriptions are refused with clear errors.
                wrong_service = Browser("https://fcm.googleapis.com/fcm/send/x").subscription()
                error = await parley.call("POST", "/api/push/subscriptions", user="bob", body=wrong_service, expect=403)
                assert error["error"]["code"] == "forbidden"
                bad_key = {**bob.subscription(), "keys": {"p256dh": "AAAA", "auth": b64url(bob.auth)}}
                error = await parley.call("POST", "/api/push/subscriptions", user="bob", body=bad_key, expect=400)
                assert "p256dh" in error["error"]["message"]
                error = await parley.call("POST", "/api/push/subscriptions", user="bob", body={"endpoint": bob.endpoint}, expect=400)
                assert error["error"]["code"] == "bad_request"
        finally:
            server.stop()
            await push.stop()

    run(main())


def test_a_gone_subscription_is_dropped_and_a_failing_service_is_retried(tmp_path):
    async def main():
        push = PushService()
        await push.start()
        server = start_server(tmp_path, push, "retries")
        try:
            async with aiohttp.ClientSession() as http:
                parley = Parley(server, http)
                gone, flaky = Browser(push.url("gone")), Browser(push.url("flaky"))
                await parley.subscribe("dave", gone)
                await parley.subscribe("erin", flaky)
                push.answers["/push/gone"] = [(410, {})]
                push.answers["/push/flaky"] = [(503, {"Retry-After": "1"}), (429, {"Retry-After": "1"})]

                await parley.post("dm:alice:dave", "hello?", "alice")
                await push.wait_for("/push/gone")
                await parley.until_metric("gone", 1)
                assert (await parley.call("GET", "/api/push/subscriptions", user="dave"))["subscriptions"] == []
                # Deleted, so never pushed to again.
                await parley.call("DELETE", "/api/push/subscriptions", user="dave", params={"endpoint": gone.endpoint}, expect=404)

                await parley.post("dm:alice:erin", "third time lucky", "alice")
                attempts = await push.wait_for("/push/flaky", 3)
                assert all(flaky.decrypt(a["body"])["body"] == "third time lucky" for a in attempts)
                await parley.until_metric("sent", 1)
                assert await parley.metric("retried") == 2

                # Unsubscribing stops the pushes.
                await parley.call("DELETE", "/api/push/subscriptions", user="erin", params={"endpoint": flaky.endpoint}, expect=204)
                assert (await parley.call("GET", "/api/push/subscriptions", user="erin"))["subscriptions"] == []
        finally:
            server.stop()
            await push.stop()

    run(main())


@pytest.mark.skipif(not (REDIS and DATABASE), reason="needs PARLEY_TEST_REDIS_URL and PARLEY_TEST_DATABASE_URL")
def test_a_cluster_pushes_each_event_once_and_sees_sessions_visible_on_any_instance(tmp_path):
    async def main():
        push = PushService()
        await push.start()
        one = start_server(tmp_path, push, "one", cluster=True)
        two = start_server(tmp_path, push, "two", cluster=True)
        try:
            async with aiohttp.ClientSession() as http:
                a, b = Parley(one, http), Parley(two, http)
                # One VAPID key for the whole cluster (kept in PostgreSQL).
                key = (await a.call("GET", "/api/push/key"))["publicKey"]
                assert (await b.call("GET", "/api/push/key"))["publicKey"] == key
                user = f"frank{os.getpid()}"
                room = f"dm:alice:{user}"
                frank = Browser(push.url(user))
                await b.subscribe(user, frank)
                for n, instance in enumerate([a, b, a]):
                    await instance.post(room, f"message {n}", "alice")
                pushes = await push.wait_for(f"/push/{user}", 3)
                assert sorted(frank.decrypt(p["body"])["body"] for p in pushes) == ["message 0", "message 1", "message 2"]
                assert await a.metric("sent") + await b.metric("sent") == 3

                # Visible on instance two: instance one, which handles the post, pushes nothing.
                tab = await b.session(user)
                await tab.request("visibility", {"visible": True})
                await a.post(room, "seen on the other instance", "alice")
                await a.until_metric("not_needed", 1)
                await tab.close()
                assert len([r for r in push.received if r["path"] == f"/push/{user}"]) == 3
                assert await a.metric("sent") + await b.metric("sent") == 3
        finally:
            one.stop()
            two.stop()
            await push.stop()

    run(main())
