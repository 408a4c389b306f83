"""socket.io-client 4.8.1 (the official JavaScript client, from the nicegui wheel) in headless
Chromium against Parley: chat with acks, and its built-in connection state recovery
(`socket.recovered`) restoring the rooms and replaying every missed message exactly once, after
the client's network dropped while the server restarted, and after the instance it was on was
killed and it reconnected to another, directly or through a ``parley gateway``."""

from __future__ import annotations

import time

import pytest
from conftest import CLUSTER_ENV, needs_cluster
from parley_harness import ParleyGateway, new_driver
from test_python_client import Client, run

WAIT = 15


def wait_for(condition, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Page:
    def __init__(self, url: str):
        self.driver = new_driver(1024, 768)
        self.driver.get(url + "/")

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def call(self, event: str, data: dict):
        """Emits with an ack callback and returns the ack's argument."""
        return self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1]; window.call(arguments[0], arguments[1]).then(done);", event, data)

    def seen(self) -> dict:
        return self.js("return window.seen;")

    def contents(self) -> list[str]:
        return [m["content"] for m in self.seen()["messages"]]

    def quit(self):
        self.driver.quit()


@pytest.fixture
def page():
    pages: list[Page] = []

    def make(url: str) -> Page:
        pages.append(Page(url))
        return pages[-1]

    yield make
    for p in pages:
        p.quit()


def publish(url: str, contents: list[str], room: str = "r") -> None:
    async def main():
        client = await Client().connect(url, "py")
        await client.ack("join", {"room": room})
        for content in contents:
            await client.ack("message", {"room": room, "content": content})
        await client.close()

    run(main())


def test_official_client_chats_and_recovers_across_a_restart(server, relay, page):
    link = relay(server.port)
    web = page(link.url)
    web.js("window.start({ auth: { user: 'web' } });")
    wait_for(lambda: web.seen()["connects"], "the first connect")
    assert web.seen()["connects"][0]["recovered"] is False
    joined = web.call("join", {"room": "r"})
    assert joined["room"] == "r" and joined["seq"] == 0
    # Upgraded to a WebSocket, as socket.io-client does by default.
    wait_for(lambda: web.js("return window.socket.io.engine.transport.name;") == "websocket", "the upgrade")
    publish(server.url, ["m1"])
    wait_for(lambda: web.contents() == ["m1"], "m1")

    # The client's network drops; meanwhile the server restarts and the room goes on.
    link.cut()
    wait_for(lambda: web.seen()["disconnects"], "the disconnect")
    server.restart_same_port()
    publish(server.url, ["m2", "m3", "m4"])
    link.restore()

    wait_for(lambda: len(web.seen()["connects"]) == 2, "the reconnect", timeout=30)
    assert web.seen()["connects"][1]["recovered"] is True, web.seen()
    wait_for(lambda: len(web.contents()) >= 4, "the missed messages")
    publish(server.url, ["m5"])
    wait_for(lambda: len(web.contents()) >= 5, "m5")
    time.sleep(0.3)  # nothing more may come: no duplicate
    assert web.contents() == ["m1", "m2", "m3", "m4", "m5"], web.seen()
    # Still in its room, without joining again: it can post there.
    sent = web.call("message", {"room": "r", "content": "from the browser"})
    assert sent["seq"] == 6


@needs_cluster
def test_official_client_recovers_on_another_instance_after_a_kill(servers, relay, page):
    first, second = servers(CLUSTER_ENV), servers(CLUSTER_ENV)
    room = f"k{int(time.time() * 1000)}"
    link = relay(first.port)
    web = page(link.url)
    web.js("window.start({ auth: { user: 'web' } });")
    wait_for(lambda: web.seen()["connects"], "the first connect")
    assert web.call("join", {"room": room})["room"] == room
    publish(second.url, ["m1"], room)
    wait_for(lambda: web.contents() == ["m1"], "m1 across instances")

    link.cut()
    first.kill()
    publish(second.url, ["m2", "m3"], room)
    link.restore(target=second.port)

    wait_for(lambda: len(web.seen()["connects"]) == 2, "the reconnect to the other instance", timeout=30)
    assert web.seen()["connects"][1]["recovered"] is True, web.seen()
    wait_for(lambda: len(web.contents()) >= 3, "the missed messages")
    publish(second.url, ["m4"], room)
    wait_for(lambda: len(web.contents()) >= 4, "m4")
    time.sleep(0.3)
    assert web.contents() == ["m1", "m2", "m3", "m4"]


def grpc_streams(server) -> int:
    """The gRPC streams a server holds (a gateway's sessions), from its metrics."""
    import re
    import urllib.request

    text = urllib.request.urlopen(server.url + "/metrics", timeout=5).read().decode()
    match = re.search(r'^parley_connections\{transport="grpc"\} (\d+)', text, re.M)
    return int(match.group(1)) if match else 0


@needs_cluster
def test_official_client_through_a_gateway_recovers_after_its_upstream_is_killed(servers, page, public_dir, tmp_path):
    first, second = servers(CLUSTER_ENV), servers(CLUSTER_ENV)
    gateway = ParleyGateway(tmp_path / "gateway.log", first, second, args=["--public-dir", str(public_dir)]).start()
    try:
        room = f"g{int(time.time() * 1000)}"
        web = page(gateway.url)
        web.js("window.start({ auth: { user: 'web' } });")
        wait_for(lambda: web.seen()["connects"], "the first connect through the gateway")
        assert web.call("join", {"room": room})["room"] == room
        wait_for(lambda: web.js("return window.socket.io.engine.transport.name;") == "websocket", "the upgrade at the gateway")
        publish(second.url, ["m1"], room)
        wait_for(lambda: web.contents() == ["m1"], "m1 through the gateway")

        # The instance that carries the session's stream dies; the room goes on on the other.
        carrying = wait_for(lambda: next((s for s in (first, second) if grpc_streams(s) == 1), None), "the carrying upstream")
        other = second if carrying is first else first
        carrying.kill()
        publish(other.url, ["m2", "m3"], room)

        # The gateway closes the transport; socket.io-client reconnects through it to the live
        # upstream and recovers its room from the offset.
        wait_for(lambda: len(web.seen()["connects"]) == 2, "the reconnect through the gateway", timeout=30)
        assert web.seen()["connects"][1]["recovered"] is True, web.seen()
        assert grpc_streams(other) == 1
        wait_for(lambda: len(web.contents()) >= 3, "the missed messages")
        publish(other.url, ["m4"], room)
        wait_for(lambda: len(web.contents()) >= 4, "m4")
        time.sleep(0.3)
        assert web.contents() == ["m1", "m2", "m3", "m4"], web.seen()
        assert web.call("message", {"room": room, "content": "from the browser"})["seq"] == 5
    finally:
        gateway.stop()


@pytest.fixture
def other_origin(public_dir):
    """The test page served from another origin than Parley's, as most Socket.IO apps are."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(public_dir))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_a_page_of_another_origin_with_polling_and_the_upgrade(servers, other_origin, page):
    server = servers({"PARLEY_CORS_ORIGINS": other_origin, "PARLEY_ALLOWED_ORIGINS": other_origin})
    web = page(other_origin)
    web.js(f"window.start({{ auth: {{ user: 'web' }} }}, '{server.url}');")
    wait_for(lambda: web.seen()["connects"], "the connect from another origin")
    assert web.call("join", {"room": "x"})["room"] == "x"
    wait_for(lambda: web.js("return window.socket.io.engine.transport.name;") == "websocket", "the upgrade")
    publish(server.url, ["cross-origin"], "x")
    wait_for(lambda: web.contents() == ["cross-origin"], "the message")
    # An origin Parley was not told of gets nothing.
    stranger = servers()
    other = page(other_origin)
    other.js(f"window.start({{ auth: {{ user: 'web' }}, reconnection: false }}, '{stranger.url}');")
    wait_for(lambda: other.seen()["errors"], "the refusal")
    assert not other.seen()["connects"]


def test_a_client_with_nothing_to_recover_is_told_so(server, page):
    web = page(server.url)
    # A recovery id and offset from nowhere: a room this user may not rejoin is not restored.
    web.js("""
      window.start({ auth: { user: 'web' }, autoConnect: false });
      window.socket._pid = 'made-up';
      window.socket._lastOffset = 'not a room=1';
      window.socket.connect();
    """)
    wait_for(lambda: web.seen()["connects"], "the connect")
    assert web.seen()["connects"][0]["recovered"] is False
