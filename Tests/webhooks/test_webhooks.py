"""Webhooks against a backend started here (aiohttp) that fails first attempts, answers
slowly and restarts, while ``parley serve`` (its default SQLite store) is itself killed
mid-delivery: every event arrives at least once, de-duplicable by id, in room order, signed.
The signature is checked with the verification examples of docs/protocol.md themselves, in
Python, PHP and Node: a forged body or a replayed request fails them. The publish hook allows,
refuses, and fails closed or open; dead letters are listed and sent again. With
``PARLEY_TEST_REDIS_URL`` and ``PARLEY_TEST_DATABASE_URL``, two instances send each event once.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "browser"))

from parley_harness import ParleyServer  # noqa: E402

SECRET = "webhook-test-secret"
TIMEOUT = 60
REDIS = os.environ.get("PARLEY_TEST_REDIS_URL", "")
DATABASE = os.environ.get("PARLEY_TEST_DATABASE_URL", "")
DOCS = Path(__file__).resolve().parent.parent.parent / "docs" / "protocol.md"


def documented(language: str) -> str:
    """The verification example for `language` in docs/protocol.md, as written there."""
    text = DOCS.read_text()
    match = re.search(r"<!-- verify:%s -->\n```\w+\n(.*?)```" % language, text, re.S)
    assert match, f"no {language} verification example in docs/protocol.md"
    return match.group(1)


namespace: dict = {}
exec(documented("python"), namespace)  # noqa: S102: the documented check, run as written
verify_python = namespace["verify_parley_signature"]


def verify_php(header: str, body: bytes, now: int) -> bool:
    script = "<?php\n" + documented("php") + (
        "\n$in = json_decode(stream_get_contents(STDIN), true);\n"
        "echo verify_parley_signature($in['secret'], $in['header'], base64_decode($in['body']), 300, $in['now']) ? 'valid' : 'invalid';\n"
    )
    return run_verifier(["php", "-r", script.removeprefix("<?php\n")], header, body, now)


def verify_node(header: str, body: bytes, now: int) -> bool:
    script = documented("node") + (
        "\nlet input = '';\nprocess.stdin.on('data', (d) => { input += d; });\n"
        "process.stdin.on('end', () => { const i = JSON.parse(input);\n"
        "  process.stdout.write(verifyParleySignature(i.secret, i.header, Buffer.from(i.body, 'base64'), 300, i.now) ? 'valid' : 'invalid'); });\n"
    )
    return run_verifier(["node", "-e", script], header, body, now)


def run_verifier(command: list[str], header: str, body: bytes, now: int) -> bool:
    import base64

    payload = json.dumps({"secret": SECRET, "header": header, "body": base64.b64encode(body).decode(), "now": now})
    result = subprocess.run(command, input=payload.encode(), capture_output=True, timeout=30)
    out = result.stdout.decode().strip()
    assert result.returncode == 0 and out in ("valid", "invalid"), f"{command[0]}: {result.returncode} {out} {result.stderr.decode()}"
    return out == "valid"


class Backend:
    """A backend on loopback. Records every request; `script(event_id, attempt)` decides the
    answer: a status, or a (delay, status) pair. `stop`/`start` restart it on the same port."""

    def __init__(self, script=None):
        self.requests: list[dict] = []
        self.delivered: list[dict] = []
        self.script = script or (lambda event, attempt: 200)
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.hook = None

    async def start(self):
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        app.router.add_post("/publish", self.publish)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def stop(self):
        await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        entry = {"headers": dict(request.headers), "body": body, "json": json.loads(body), "at": time.time()}
        self.requests.append(entry)
        answer = self.script(request.headers["Parley-Event-Id"], int(request.headers["Parley-Attempt"]))
        delay, status = answer if isinstance(answer, tuple) else (0, answer)
        if delay:
            await asyncio.sleep(delay)
        if 200 <= status < 300:
            self.delivered.append(entry)
        return web.Response(status=status)

    async def publish(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append({"headers": dict(request.headers), "body": body, "json": json.loads(body), "at": time.time()})
        return await self.hook(json.loads(body))

    def first_deliveries(self) -> list[dict]:
        """Deliveries de-duplicated by event id, the first of each kept, in arrival order."""
        seen, out = set(), []
        for entry in self.delivered:
            if entry["json"]["id"] not in seen:
                seen.add(entry["json"]["id"])
                out.append(entry)
        return out

    async def until(self, condition, what: str):
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)


class Parley:
    def __init__(self, server: ParleyServer, http: aiohttp.ClientSession):
        self.server = server
        self.http = http

    async def call(self, method: str, path: str, *, body=None, params=None, expect=200, headers=None):
        async with self.http.request(method, self.server.url + path, params=params, json=body, headers=headers) as answer:
            data = await answer.json() if answer.status != 204 else {}
            assert answer.status == expect, f"{method} {path}: {answer.status} {data}"
            return data

    async def post(self, room: str, content: str, user: str = "alice", expect: int = 201):
        return await self.call("POST", f"/api/rooms/{room}/messages", body={"content": content, "user": user}, expect=expect)

    async def metric(self, result: str) -> int:
        async with self.http.get(self.server.url + "/metrics") as answer:
            text = await answer.text()
        match = re.search(r'^parley_webhooks_total\{result="%s"\} (\d+)' % result, text, re.M)
        return int(match.group(1)) if match else 0


def start_server(tmp_path: Path, name: str, env: dict, cluster: bool = False) -> ParleyServer:
    env = {"PARLEY_WEBHOOK_SECRET": SECRET, **env}
    if cluster:
        env.update({"PARLEY_REDIS_URL": REDIS, "PARLEY_DATABASE_URL": DATABASE})
    data = tmp_path / name
    data.mkdir()
    server = ParleyServer(data, env=env)
    server.start()
    return server


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 240))


def check_order(deliveries: list[dict]):
    """A room's stored events, first deliveries only, come in seq order."""
    last: dict[str, int] = {}
    for entry in deliveries:
        event = entry["json"]
        if event.get("data") and "seq" in event["data"] and event["type"] != "read":
            seq = event["data"]["seq"]
            assert seq > last.get(event["room"], 0), f"{event['room']}: seq {seq} after {last.get(event['room'])}"
            last[event["room"]] = seq


def test_every_event_arrives_signed_and_in_room_order_through_failures_restarts_and_a_killed_server(tmp_path):
    def script(event: str, attempt: int):
        n = int(event)
        if n % 4 == 0 and attempt <= 2:
            return 500  # fails the first attempts
        if n % 9 == 0 and attempt == 1:
            return (1.0, 200)  # answers slowly
        return 200

    async def main():
        backend = Backend(script)
        await backend.start()
        server = start_server(
            tmp_path, "single", {"PARLEY_WEBHOOK_URLS": backend.url, "PARLEY_WEBHOOK_RETRY_MS": "100", "PARLEY_API_KEY": "backend-key"}
        )
        posted: list[dict] = []
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
                parley = Parley(server, http)
                rooms = ["lobby", "dev", "ops"]
                for i in range(30):
                    posted.append(await parley.post(rooms[i % 3], f"first half {i}", user=["alice", "bob"][i % 2]))
                    if i == 12:
                        # The backend goes away and comes back on the same port.
                        await backend.stop()
                        await asyncio.sleep(0.5)
                        await backend.start()
                # Killed while deliveries (retries, a slow answer) are in flight.
                await backend.until(lambda: len(backend.first_deliveries()) >= 5, "some deliveries before the kill")
                server.kill()
                server.start(port=server.port)
                parley = Parley(server, http)
                for i in range(30):
                    posted.append(await parley.post(rooms[i % 3], f"second half {i}", user="carol"))
                target = posted[0]
                edited = await parley.call(
                    "PATCH", f"/api/rooms/{target['room']}/messages/{target['id']}", body={"content": "edited", "user": target["user"]}
                )
                reacted = await parley.call(
                    "POST", f"/api/rooms/{target['room']}/messages/{target['id']}/reactions", body={"emoji": "👍", "user": "bob"}
                )
                removed = await parley.call("DELETE", f"/api/rooms/{target['room']}/messages/{posted[3]['id']}", params={"user": posted[3]["user"]})
                banned = await parley.call(
                    "POST", "/api/rooms/ops/moderation", body={"action": "ban", "user": "mallory", "moderator": "alice"}, expect=201,
                    headers={"Authorization": "Bearer backend-key"},
                )
                socket = await http.ws_connect(server.url.replace("http", "ws") + "/ws?user=dave")
                await socket.send_json({"event": "join", "data": {"room": "dev"}, "id": 1})
                await socket.send_json({"event": "read", "data": {"room": "dev", "seq": 5}, "id": 2})
                acked = set()
                while acked != {1, 2}:
                    frame = await asyncio.wait_for(socket.receive_json(), 10)
                    assert frame["event"] != "error", frame
                    if frame["event"] == "ack":
                        acked.add(frame["id"])
                await socket.close()

                stored = {m["id"] for m in posted} | {edited["id"], reacted["id"], removed["id"], banned["id"]}

                def done():
                    first = backend.first_deliveries()
                    ids = {e["json"]["data"]["id"] for e in first if e["json"].get("data") and "id" in e["json"]["data"]}
                    kinds = {(e["json"]["type"], e["json"]["user"]) for e in first}
                    types = {e["json"]["type"] for e in first}
                    return (
                        stored <= ids and {("join", "dave"), ("read", "dave"), ("leave", "dave")} <= kinds
                        and {"edit", "delete", "reaction", "moderation"} <= types
                    )

                await backend.until(done, "every event delivered")
                first = backend.first_deliveries()
                by_type = {}
                for entry in first:
                    by_type.setdefault(entry["json"]["type"], []).append(entry["json"])
                assert {"message", "edit", "delete", "reaction", "moderation", "join", "leave", "read"} <= set(by_type)
                assert [e for e in by_type["edit"] if e["data"]["target"] == target["id"]][0]["data"]["content"] == "edited"
                assert by_type["moderation"][0]["data"]["kind"] == "ban" and by_type["moderation"][0]["data"]["target"] == "mallory"
                assert [e for e in by_type["read"] if e["user"] == "dave"][0]["data"] == {"seq": 5}
                check_order(first)
                # Retried events were retried (failed attempts, then one delivery each).
                failed = [r for r in backend.requests if r["json"]["id"] in {e["json"]["id"] for e in first} and r not in backend.delivered]
                assert failed, "no attempt failed: the backend's script did not run"
                assert all(int(r["headers"]["Parley-Attempt"]) >= 1 for r in backend.requests)
                assert await parley.metric("retried") >= 1

                # Every request is signed; the documented checks accept them and refuse a forged
                # body and a replay outside the window, in Python, PHP and Node.
                for entry in backend.requests:
                    header = entry["headers"]["Parley-Signature"]
                    assert verify_python(SECRET, header, entry["body"]), header
                sample = first[0]
                header, body = sample["headers"]["Parley-Signature"], sample["body"]
                signed_at = int(header.split(",")[0].removeprefix("t="))
                forged = body.replace(b"first half", b"FIRST HALF")
                assert forged != body
                for verify in (lambda h, b, n: verify_python(SECRET, h, b, now=n), verify_php, verify_node):
                    assert verify(header, body, signed_at + 5)
                    assert not verify(header, forged, signed_at + 5)
                    assert not verify(header, body, signed_at + 301)  # replayed later
                    assert not verify(header.replace("v1=", "v1=0"), body, signed_at)
        finally:
            server.finish(failed=sys.exc_info()[0] is not None)
            await backend.stop()

    run(main())


def test_dead_letters_are_kept_listed_and_sent_again(tmp_path):
    async def main():
        healthy = {"on": False}
        backend = Backend(lambda event, attempt: 200 if healthy["on"] else 503)
        await backend.start()
        server = start_server(
            tmp_path, "dead", {"PARLEY_WEBHOOK_URLS": backend.url, "PARLEY_WEBHOOK_RETRY_MS": "20", "PARLEY_WEBHOOK_ATTEMPTS": "3",
                               "PARLEY_WEBHOOK_EVENTS": "message"}
        )
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
                parley = Parley(server, http)
                first = await parley.post("lobby", "one")
                second = await parley.post("lobby", "two")
                deadline = time.monotonic() + TIMEOUT
                while len((dead := (await parley.call("GET", "/api/webhooks/dead"))["dead"])) < 2:
                    assert time.monotonic() < deadline, f"dead letters: {dead}"
                    await asyncio.sleep(0.05)
                assert [d["type"] for d in dead] == ["message", "message"]
                assert all(d["attempts"] == 3 and d["error"] == "HTTP 503" and d["url"] == 1 for d in dead)
                assert len(backend.requests) == 6
                assert await parley.metric("dead") == 2
                healthy["on"] = True
                await parley.call("POST", f"/api/webhooks/dead/{dead[1]['id']}/retry")
                await backend.until(lambda: len(backend.delivered) == 1, "the dead letter sent again")
                assert backend.delivered[0]["json"]["data"]["id"] == second["id"]
                assert backend.delivered[0]["headers"]["Parley-Attempt"] == "1"
                assert [d["id"] for d in (await parley.call("GET", "/api/webhooks/dead"))["dead"]] == [dead[0]["id"]]
                await parley.call("POST", "/api/webhooks/dead/999999/retry", expect=404)
                # Later events are not held back by dead ones.
                third = await parley.post("lobby", "three")
                await backend.until(lambda: len(backend.delivered) == 2, "a later event")
                assert backend.delivered[1]["json"]["data"]["id"] == third["id"]
                assert first["id"] not in {e["json"]["data"]["id"] for e in backend.delivered}
        finally:
            server.finish(failed=sys.exc_info()[0] is not None)
            await backend.stop()

    run(main())


def test_the_publish_hook_allows_refuses_and_fails_closed_or_open(tmp_path):
    async def hook(question: dict) -> web.Response:
        if "spam" in question["content"]:
            return web.json_response({"reason": "no spam here"}, status=403)
        if "secret" in question["content"]:
            return web.json_response({"allow": False, "reason": "do not share secrets"})
        if "slow" in question["content"]:
            await asyncio.sleep(2)
        return web.json_response({"allow": True})

    async def main():
        backend = Backend()
        backend.hook = hook
        await backend.start()
        hook_url = f"http://127.0.0.1:{backend.port}/publish"
        env = {"PARLEY_PUBLISH_HOOK_URL": hook_url, "PARLEY_PUBLISH_HOOK_TIMEOUT_MS": "300"}
        server = start_server(tmp_path, "hook", env)
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
                parley = Parley(server, http)
                allowed = await parley.post("lobby", "hello", user="alice")
                question = backend.requests[-1]
                assert question["json"]["type"] == "publish" and question["json"]["content"] == "hello" and question["json"]["user"] == "alice"
                assert question["headers"]["Parley-Event-Type"] == "publish"
                assert verify_python(SECRET, question["headers"]["Parley-Signature"], question["body"])
                refused = await parley.post("lobby", "buy spam", expect=403)
                assert refused["error"]["code"] == "forbidden" and refused["error"]["message"] == "no spam here"
                refused = await parley.post("lobby", "my secret", expect=403)
                assert refused["error"]["message"] == "do not share secrets"
                # Over WebSocket the same: an error reply, nothing stored.
                socket = await http.ws_connect(server.url.replace("http", "ws") + "/ws?user=bob")
                await socket.send_json({"event": "message", "data": {"room": "lobby", "content": "more spam"}, "id": 1})
                reply = await asyncio.wait_for(socket.receive_json(), 10)
                assert reply["event"] == "error" and reply["id"] == 1 and reply["data"]["code"] == "forbidden"
                await socket.close()
                # No answer in time: fail closed.
                timed_out = await parley.post("lobby", "slow one", expect=503)
                assert timed_out["error"]["code"] == "unavailable"
                history = await parley.call("GET", "/api/rooms/lobby/messages")
                assert [m["content"] for m in history["messages"]] == ["hello"]
                assert allowed["id"] == history["messages"][0]["id"]

                # A backend's own post (an API key would be; open mode's HTTP reader is not a
                # poster) still asks; fail open lets the slow one through.
                server.stop()
                server.env["PARLEY_PUBLISH_HOOK_FAILURE"] = "open"
                server.start(port=server.port)
                parley = Parley(server, http)
                await parley.post("lobby", "slow two")
                history = await parley.call("GET", "/api/rooms/lobby/messages")
                assert [m["content"] for m in history["messages"]] == ["hello", "slow two"]
                assert await parley.metric("hook_failed") == 1
        finally:
            server.finish(failed=sys.exc_info()[0] is not None)
            await backend.stop()

    run(main())


@pytest.mark.skipif(not (REDIS and DATABASE), reason="needs PARLEY_TEST_REDIS_URL and PARLEY_TEST_DATABASE_URL")
def test_a_cluster_sends_each_event_once(tmp_path):
    async def main():
        backend = Backend()
        await backend.start()
        env = {"PARLEY_WEBHOOK_URLS": backend.url, "PARLEY_WEBHOOK_EVENTS": "message"}
        one = start_server(tmp_path, "one", env, cluster=True)
        two = start_server(tmp_path, "two", env, cluster=True)
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
                instances = [Parley(one, http), Parley(two, http)]
                rooms = [f"cluster-{os.getpid()}-{n}" for n in range(4)]
                posted = []
                for i in range(60):
                    posted.append(await instances[i % 2].post(rooms[i % 4], f"m{i}", user="alice"))
                ids = {m["id"] for m in posted}
                await backend.until(lambda: ids <= {e["json"]["data"]["id"] for e in backend.delivered}, "every message")
                await asyncio.sleep(1.5)  # both instances poll again: nothing more may come
                assert len(backend.requests) == len(posted), f"{len(backend.requests)} requests for {len(posted)} events"
                check_order(backend.first_deliveries())
        finally:
            one.finish(failed=sys.exc_info()[0] is not None)
            two.finish(failed=sys.exc_info()[0] is not None)
            await backend.stop()

    run(main())
