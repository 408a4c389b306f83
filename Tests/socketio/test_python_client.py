"""python-socketio (asyncio client; not written here) against Parley's /socket.io/: every command
with acks over polling, WebSocket and the upgrade, rooms, presence, typing, read receipts,
errors, idempotent retry, the same order as a plain WebSocket client, and bad packets answered
as the protocols say while the server keeps serving. Each runs against the server itself and
through a ``parley gateway`` in front of it (the ``edge`` fixture)."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request

import aiohttp
import pytest
import socketio

TIMEOUT = 10


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


class Client:
    """A python-socketio client that records every event it receives, by name."""

    def __init__(self):
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: dict[str, asyncio.Queue] = {}
        self.sio.on("*", self._any)

    async def _any(self, event, *args):
        self.queue(event).put_nowait(args)

    def queue(self, event: str) -> asyncio.Queue:
        return self.events.setdefault(event, asyncio.Queue())

    async def connect(self, url: str, user: str | None, transports=None, **kwargs):
        await self.sio.connect(url, auth={"user": user} if user else None, transports=transports,
                               wait_timeout=TIMEOUT, **kwargs)
        return self

    async def call(self, event: str, data=None):
        return await self.sio.call(event, data, timeout=TIMEOUT)

    async def ack(self, event: str, data=None):
        answer = await self.call(event, data)
        assert "error" not in answer, f"{event} {data}: {answer}"
        return answer

    async def next(self, event: str):
        return await asyncio.wait_for(self.queue(event).get(), TIMEOUT)

    async def close(self):
        await self.sio.disconnect()


async def serves_on(server) -> None:
    """The server still serves a new client."""
    ok = await Client().connect(server.url, "after")
    await ok.ack("join", {"room": "r"})
    await ok.close()


TRANSPORTS = {"polling": ["polling"], "websocket": ["websocket"], "upgrade": ["polling", "websocket"]}


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_every_command_with_acks(edge, transport):
    async def main():
        transports = TRANSPORTS[transport]
        alice = await Client().connect(edge.url, "alice", transports)
        bob = await Client().connect(edge.url, "bob", transports)
        carol = await Client().connect(edge.url, "carol", transports)
        if transport == "upgrade":
            for _ in range(100):
                if alice.sio.transport() == "websocket":
                    break
                await asyncio.sleep(0.05)
        assert alice.sio.transport() == {"polling": "polling", "websocket": "websocket", "upgrade": "websocket"}[transport]

        joined = await alice.ack("join", {"room": "r1"})
        assert joined["room"] == "r1" and joined["seq"] == 0
        assert [u["user"] for u in joined["users"]] == ["alice"]
        joined = await bob.ack("join", {"room": "r1"})
        assert [u["user"] for u in joined["users"]] == ["alice", "bob"]
        (event,) = await alice.next("join")
        assert event["room"] == "r1" and event["user"] == "bob"
        await carol.ack("join", {"room": "r2"})

        sent = await alice.ack("message", {"room": "r1", "content": "hello", "clientId": "c-1"})
        assert sent["seq"] == 1 and sent["user"] == "alice" and sent["content"] == "hello" and sent["clientId"] == "c-1"
        received, offset = await bob.next("message")
        assert received == sent
        assert offset == "r1=1"  # the recovery offset closes every message event

        # Rooms are isolated: carol only ever sees r2.
        await carol.ack("message", {"room": "r2", "content": "elsewhere"})
        (elsewhere, _) = await carol.next("message")
        assert elsewhere["room"] == "r2"
        assert carol.queue("message").empty()

        await bob.ack("typing", {"room": "r1", "typing": True})
        (typing,) = await alice.next("typing")
        assert typing == {"room": "r1", "user": "bob", "typing": True}
        assert await bob.ack("read", {"room": "r1", "seq": 1}) == {"room": "r1", "seq": 1}
        (read,) = await alice.next("read")
        assert read == {"room": "r1", "user": "bob", "seq": 1}

        history = await bob.ack("history", {"room": "r1"})
        assert [m["content"] for m in history["messages"]] == ["hello"] and history["hasMore"] is False
        presence = await bob.ack("presence", {"room": "r1"})
        assert [u["user"] for u in presence["users"]] == ["alice", "bob"]

        assert await bob.ack("leave", {"room": "r1"}) == {"room": "r1"}
        (left,) = await alice.next("leave")
        assert left["user"] == "bob"

        # Errors come back through the ack, as the WebSocket's error frame would.
        assert (await alice.call("message", {"room": "r1"}))["error"] == {
            "code": "bad_request", "message": "missing field 'data.content'"}
        assert (await alice.call("nope", {}))["error"]["code"] == "bad_request"
        assert (await alice.call("join", {"room": "no spaces"}))["error"]["code"] == "bad_request"
        assert (await alice.call("leave", {"room": "r9"}))["error"]["code"] == "not_found"
        # An event without an ack callback that fails is answered with an `error` event.
        await alice.sio.emit("message", {"room": "r1"})
        (error,) = await alice.next("error")
        assert error["code"] == "bad_request"
        for client in (alice, bob, carol):
            await client.close()

    run(main())


def test_connect_errors_and_namespaces(edge):
    async def main():
        # Open mode needs a user: CONNECT_ERROR with the reason.
        nameless = socketio.AsyncClient(reconnection=False)
        errors = []
        nameless.on("connect_error", lambda data: errors.append(data))
        with pytest.raises(socketio.exceptions.ConnectionError):
            await nameless.connect(edge.url, wait_timeout=TIMEOUT)
        assert errors and "user id is required" in json.dumps(errors[0])
        # Only the main namespace exists.
        admin = socketio.AsyncClient(reconnection=False)
        admin_errors = []
        admin.on("connect_error", lambda data: admin_errors.append(data), namespace="/admin")
        with pytest.raises(socketio.exceptions.ConnectionError):
            await admin.connect(edge.url, auth={"user": "eve"}, namespaces=["/admin"], wait_timeout=TIMEOUT)
        assert admin_errors and "Invalid namespace" in json.dumps(admin_errors[0])
        await admin.disconnect()
        await serves_on(edge)

    run(main())


def test_idempotent_retry(edge):
    async def main():
        alice = await Client().connect(edge.url, "alice")
        await alice.ack("join", {"room": "r"})
        first = await alice.ack("message", {"room": "r", "content": "once", "clientId": "retry-1"})
        again = await alice.ack("message", {"room": "r", "content": "once", "clientId": "retry-1"})
        assert again["id"] == first["id"] and again["seq"] == first["seq"]
        history = await alice.ack("history", {"room": "r"})
        assert [m["id"] for m in history["messages"]] == [first["id"]]
        await alice.close()

    run(main())


def test_edits_reactions_replies_and_deletions(edge):
    async def main():
        alice = await Client().connect(edge.url, "alice")
        bob = await Client().connect(edge.url, "bob", transports=["websocket"])
        for client in (alice, bob):
            await client.ack("join", {"room": "c"})
        first = await alice.ack("message", {"room": "c", "content": "helo"})
        reply = await bob.ack("message", {"room": "c", "content": "hi!", "replyTo": first["id"]})
        assert reply["quote"] == {"id": first["id"], "user": "alice", "content": "helo"}
        edited = await alice.ack("edit", {"room": "c", "id": first["id"], "content": "hello"})
        assert edited["content"] == "hello" and "edited" in edited
        on = await bob.ack("react", {"room": "c", "id": first["id"], "emoji": "👍"})
        assert on["reactions"] == [{"emoji": "👍", "users": ["bob"]}]
        off = await bob.ack("react", {"room": "c", "id": first["id"], "emoji": "👍"})
        assert "reactions" not in off
        refused = await bob.call("edit", {"room": "c", "id": first["id"], "content": "mine"})
        assert refused["error"]["code"] == "forbidden"
        gone = await alice.ack("delete", {"room": "c", "id": first["id"]})
        assert gone["deleted"] is True and gone["content"] == ""
        rows = [(await bob.next("message"))[0] for _ in range(6)]
        assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5, 6]
        assert [r.get("kind", "message") for r in rows] == ["message", "message", "edit", "react", "unreact", "delete"]
        assert all(r["target"] == first["id"] for r in rows[2:])
        history = await bob.ack("history", {"room": "c"})
        assert history["messages"][0]["deleted"] is True
        assert history["messages"][1]["quote"] == {"id": first["id"], "user": "alice", "content": "", "deleted": True}
        await alice.close()
        await bob.close()

    run(main())


@pytest.mark.server_env(PARLEY_RATE_PER_SEC="0")
def test_same_messages_in_the_same_order_as_a_websocket_client(edge):
    async def main():
        sio = await Client().connect(edge.url, "sio-user")
        await sio.ack("join", {"room": "mixed"})
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(edge.url.replace("http", "ws") + "/ws?user=ws-user") as ws:
                await ws.send_json({"event": "join", "id": 1, "data": {"room": "mixed"}})
                # Joined before anyone posts: a join without `since` starts at the room's end, so a
                # message stored before it would never reach this socket (a loaded machine did that).
                while True:
                    frame = json.loads((await asyncio.wait_for(ws.receive(), TIMEOUT)).data)
                    if frame.get("id") == 1:
                        assert frame["event"] == "ack", frame
                        break
                count = 40
                for i in range(count):
                    await sio.sio.emit("message", {"room": "mixed", "content": f"sio {i}"})
                    await ws.send_json({"event": "message", "data": {"room": "mixed", "content": f"ws {i}"}})
                over_ws = []
                while len(over_ws) < 2 * count:
                    frame = json.loads((await asyncio.wait_for(ws.receive(), TIMEOUT)).data)
                    if frame["event"] == "message":
                        over_ws.append(frame["data"])
        over_sio = [(await sio.next("message"))[0] for _ in range(2 * count)]
        assert [m["seq"] for m in over_sio] == list(range(1, 2 * count + 1))
        assert over_sio == over_ws
        await sio.close()

    run(main())


# ---------------------------------------------------------------------------------------------
# The protocol by hand: what the official clients never send
# ---------------------------------------------------------------------------------------------


class Polling:
    """A bare Engine.IO polling session."""

    def __init__(self, base: str):
        self.base = base
        self.sid = None

    def request(self, method: str, query: str, body: bytes | None = None) -> tuple[int, str]:
        req = urllib.request.Request(f"{self.base}/socket.io/?{query}", data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", "text/plain;charset=UTF-8")
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def open(self) -> dict:
        status, body = self.request("GET", "EIO=4&transport=polling")
        assert status == 200 and body.startswith("0"), body
        handshake = json.loads(body[1:])
        self.sid = handshake["sid"]
        return handshake

    def get(self) -> tuple[int, list[str]]:
        status, body = self.request("GET", f"EIO=4&transport=polling&sid={self.sid}")
        return status, body.split("\x1e") if status == 200 else [body]

    def post(self, *packets: str) -> tuple[int, str]:
        return self.request("POST", f"EIO=4&transport=polling&sid={self.sid}", "\x1e".join(packets).encode())


def test_engineio_handshake_and_errors(edge):
    client = Polling(edge.url)
    handshake = client.open()
    assert handshake["upgrades"] == ["websocket"]
    assert handshake["pingInterval"] > 0 and handshake["pingTimeout"] > 0 and handshake["maxPayload"] == 65536
    # Unknown session, version and transport: 400 with the reference server's codes.
    for query, code in (("EIO=4&transport=polling&sid=nope", 1), ("EIO=3&transport=polling", 5),
                        ("EIO=4&transport=carrier-pigeon", 0)):
        status, body = client.request("GET", query)
        assert status == 400 and json.loads(body)["code"] == code, (query, body)
    status, _ = client.request("POST", "EIO=4&transport=polling&sid=nope", b"40")
    assert status == 400


def test_bad_packets_are_answered_and_the_server_serves_on(edge):
    # An unknown namespace: CONNECT_ERROR for it, the session lives on.
    client = Polling(edge.url)
    client.open()
    assert client.post("40/admin,") == (200, "ok")
    status, packets = client.get()
    assert status == 200 and packets[0].startswith('44/admin,{"message":"Invalid namespace"'), packets
    assert client.post('40{"user":"raw"}') == (200, "ok")
    status, packets = client.get()
    assert packets[0].startswith('40{"sid":'), packets

    # Binary data where no command takes bytes: a clear error, as an ack or an event.
    assert client.post('451-7["message",{"_placeholder":true,"num":0}]', "bAQID") == (200, "ok")
    status, packets = client.get()
    answer = json.loads(packets[0][len("437"):])
    assert packets[0].startswith("437") and answer[0]["error"]["code"] == "bad_request", packets
    assert "binary" in answer[0]["error"]["message"]

    # Oversize payloads are refused before they are read.
    status, _ = client.post("4" + "x" * 70000)
    assert status == 413

    # A malformed packet ends that session, as the protocol says; others are untouched.
    for bad in ('42["message"', "49", '42{"not":"an array"}', "4"):
        victim = Polling(edge.url)
        victim.open()
        victim.post('40{"user":"victim"}')
        victim.get()
        assert victim.post(bad) == (200, "ok")
        status, packets = victim.get()
        assert status == 400 or packets[-1] == "1", (bad, packets)
        status, _ = victim.get()
        assert status == 400, bad

    run(serves_on(edge))


def test_recovery_offsets_by_hand(edge):
    async def post_messages():
        alice = await Client().connect(edge.url, "alice")
        await alice.ack("join", {"room": "a"})
        for i in range(3):
            await alice.ack("message", {"room": "a", "content": f"m{i + 1}"})
        await alice.close()

    run(post_messages())
    # A session that was in room a up to seq 1 comes back: it is recovered, with m2 and m3.
    client = Polling(edge.url)
    client.open()
    client.post('40{"user":"bob","pid":"p-1","offset":"a=1"}')
    packets = []
    while not any(p.startswith("40") for p in packets):
        status, more = client.get()
        assert status == 200
        packets += more
    connected = json.loads(next(p for p in packets if p.startswith("40"))[2:])
    assert connected["pid"] == "p-1"
    replayed = [json.loads(p[2:]) for p in packets if p.startswith('42["message"')]
    assert [(m[1]["content"], m[2]) for m in replayed] == [("m2", "a=2"), ("m3", "a=3")]
    # An offset it cannot honour (not a room name): not recovered, told by a new pid.
    other = Polling(edge.url)
    other.open()
    other.post('40{"user":"bob","pid":"p-2","offset":"no room!=1"}')
    status, packets = other.get()
    connected = json.loads(next(p for p in packets if p.startswith("40"))[2:])
    assert connected["pid"] != "p-2"


@pytest.mark.server_env(PARLEY_RATE_PER_SEC="0", PARLEY_COMMAND_RATE_PER_SEC="0")
def test_more_events_in_one_post_than_may_wait_are_all_answered_in_order(edge):
    # 200 acked events in one POST: more than the 64 a session may have waiting. The answer to
    # the POST waits until they are served (the client cannot queue without bound); none is
    # dropped and the acks come in order, on the server and through the gateway alike.
    client = Polling(edge.url)
    client.open()
    assert client.post('40{"user":"flood"}') == (200, "ok")
    packets = []
    while not any(p.startswith("40") for p in packets):
        status, more = client.get()
        assert status == 200
        packets += more
    events = ['421["join",{"room":"flood"}]'] + [f'42{i}["message",{{"room":"flood","content":"m{i}"}}]' for i in range(2, 202)]
    assert client.post(*events) == (200, "ok")
    acks = []
    for _ in range(400):
        status, more = client.get()
        assert status == 200, more
        acks += [p for p in more if p.startswith("43")]
        if len(acks) >= 201:
            break
    ids = [int(p[2:p.index("[")]) for p in acks]
    assert ids == list(range(1, 202)), ids[:20]
    seqs = [json.loads(p[p.index("["):])[0]["seq"] for p in acks[1:]]
    assert seqs == list(range(1, 201))


@pytest.mark.server_env(PARLEY_OUTBOX_BYTES="16384", PARLEY_RATE_PER_SEC="0")
def test_a_slow_consumer_is_cut_off(edge):
    slow = Polling(edge.url)
    slow.open()
    slow.post('40{"user":"slow"}', '420["join",{"room":"busy"}]')

    async def flood():
        alice = await Client().connect(edge.url, "alice")
        await alice.ack("join", {"room": "busy"})
        for i in range(40):
            await alice.ack("message", {"room": "busy", "content": f"{i} " + "x" * 1000})
        # alice is not held up by the slow reader, and the server serves on.
        history = await alice.ack("history", {"room": "busy", "limit": 3})
        assert [m["seq"] for m in history["messages"]] == [38, 39, 40]
        await alice.close()

    run(flood())
    status, packets = slow.get()
    # The backlog was dropped and the transport closed (the client may reconnect and recover).
    assert status == 400 or packets == ["1"], packets
    # Counted where it was cut off: the server, or the gateway (whose outbox filled).
    path, metric = ("/ws-metrics", "parley_gateway_slow_consumers_total") if "gateway" in type(edge).__name__.lower() \
        else ("/metrics", "parley_slow_consumers_total")
    metrics = urllib.request.urlopen(edge.url + path, timeout=TIMEOUT).read().decode()
    assert re.search(rf"^{metric}(\{{[^}}]*\}})? [1-9]", metrics, re.M), metrics


# ---------------------------------------------------------------------------------------------
# JWT mode
# ---------------------------------------------------------------------------------------------

SECRET = "socket.io tests: a secret of more than thirty-two bytes"


def token(sub: str, rooms: list[str] | None = None, lifetime: int = 3600) -> str:
    """An HS256 JWT, made here with the standard library."""
    import base64
    import hashlib
    import hmac
    import time

    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).rstrip(b"=").decode()

    claims = {"sub": sub, "exp": int(time.time()) + lifetime}
    if rooms is not None:
        claims["rooms"] = rooms
    signing = part({"alg": "HS256", "typ": "JWT"}) + "." + part(claims)
    signature = hmac.new(SECRET.encode(), signing.encode(), hashlib.sha256).digest()
    return signing + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


@pytest.mark.server_env(PARLEY_JWT_SECRET=SECRET)
def test_jwt_auth_permissions_and_refresh(edge):
    async def main():
        # No token, a forged one, a claimed user without a token: CONNECT_ERROR unauthorized.
        for auth in (None, {"token": token("alice")[:-4] + "AAAA"}, {"user": "alice"}):
            client = socketio.AsyncClient(reconnection=False)
            errors = []
            client.on("connect_error", lambda data: errors.append(data))
            with pytest.raises(socketio.exceptions.ConnectionError):
                await client.connect(edge.url, auth=auth, wait_timeout=TIMEOUT)
            assert errors and errors[0]["data"]["code"] == "unauthorized", (auth, errors)
        # A token limited to room a: b is forbidden, as on every transport.
        alice = Client()
        await alice.sio.connect(edge.url, auth={"token": token("alice", rooms=["a"])}, wait_timeout=TIMEOUT)
        await alice.ack("join", {"room": "a"})
        assert (await alice.call("join", {"room": "b"}))["error"]["code"] == "forbidden"
        assert (await alice.call("message", {"room": "b", "content": "x"}))["error"]["code"] == "forbidden"
        # A refresh is for the same user only; a wider token then opens room b.
        assert (await alice.call("refresh", {"token": token("mallory")}))["error"]["code"] == "forbidden"
        assert (await alice.ack("refresh", {"token": token("alice")}))["user"] == "alice"
        await alice.ack("join", {"room": "b"})
        await alice.close()

    run(main())
