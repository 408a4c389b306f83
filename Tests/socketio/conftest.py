"""Fixtures of the Socket.IO suite: a real ``parley serve`` (open mode) whose public folder holds
a test page and socket.io-client, a switchable TCP relay to cut and restore a client's network,
and headless Chromium.

Environment: ``PARLEY_BIN`` (server binary), ``PARLEY_SOCKETIO_JS`` (socket.io.min.js; by default
``Tests/socketio/.assets/socket.io.min.js``), ``PARLEY_TEST_REDIS_URL`` and
``PARLEY_TEST_DATABASE_URL`` (a Redis and a PostgreSQL for the cluster test, which is skipped
without them).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import threading
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "browser"))

from parley_harness import ParleyGateway, ParleyServer  # noqa: E402

SOCKETIO_JS = Path(os.environ.get("PARLEY_SOCKETIO_JS", HERE / ".assets" / "socket.io.min.js"))

# Scripts in files of their own: Parley's Content-Security-Policy allows no inline script.
PAGE = """<!doctype html>
<meta charset="utf-8">
<title>socket.io-client against Parley</title>
<script src="/socket.io.min.js"></script>
<script src="/page.js"></script>
"""

PAGE_JS = """
  // The page's log of everything the client saw, read by the tests.
  window.seen = { messages: [], connects: [], disconnects: [], errors: [] };
  window.start = (options, url) => {
    const settings = Object.assign({ reconnectionDelay: 200, reconnectionDelayMax: 500 }, options);
    const socket = url ? io(url, settings) : io(settings);
    socket.on("connect", () => window.seen.connects.push({ id: socket.id, recovered: socket.recovered }));
    socket.on("disconnect", (reason) => window.seen.disconnects.push(reason));
    socket.on("connect_error", (error) => window.seen.errors.push(error.message));
    socket.on("message", (message) => window.seen.messages.push(message));
    window.socket = socket;
  };
  window.call = (event, data) => new Promise((resolve) => window.socket.emit(event, data, resolve));
"""


@pytest.fixture
def public_dir():
    if not SOCKETIO_JS.is_file():
        pytest.fail(f"no socket.io-client at {SOCKETIO_JS} (scripts/install-test-deps fetches it)")
    folder = Path(tempfile.mkdtemp(prefix="parley-sio-public-"))
    shutil.copy(SOCKETIO_JS, folder / "socket.io.min.js")
    (folder / "index.html").write_text(PAGE)
    (folder / "page.js").write_text(PAGE_JS)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def servers(request, public_dir):
    """Factory: ``servers(env)`` starts a ``parley serve`` with those settings."""
    started: list[ParleyServer] = []
    marker = request.node.get_closest_marker("server_env")

    def start(env: dict[str, str] | None = None) -> ParleyServer:
        data_dir = Path(tempfile.mkdtemp(prefix="parley-sio-"))
        server = ParleyServer(data_dir, env={**(dict(marker.kwargs) if marker else {}), **(env or {})}, public_dir=public_dir)
        server.start()
        started.append(server)
        return server

    yield start
    failed = getattr(request.node, "rep_call", None) and request.node.rep_call.failed
    for server in started:
        server.kill()
        server.finish(failed)


@pytest.fixture
def server(servers):
    return servers()


@pytest.fixture(params=["direct", "gateway"])
def edge(request, server, tmp_path):
    """What the client connects to: the server itself, or a ``parley gateway`` in front of it
    (the Socket.IO sessions at the gateway, their commands over gRPC to the server), started
    with the server's settings."""
    if request.param == "direct":
        yield server
        return
    marker = request.node.get_closest_marker("server_env")
    gateway = ParleyGateway(tmp_path / "gateway.log", server, env=dict(marker.kwargs) if marker else None).start()
    yield gateway
    gateway.stop()
    if getattr(request.node, "rep_call", None) and request.node.rep_call.failed:
        print(f"\n--- gateway log ---\n{gateway.log_tail()}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


class Relay:
    """A loopback TCP relay to a target port that can cut every connection and refuse new ones
    (a client's network going away) and be pointed at another server. Given several targets,
    it is a round-robin load balancer without sticky sessions: each new connection goes to
    the next one."""

    def __init__(self, target: int, *others: int):
        self.target = target
        self.targets = [target, *others]
        self.connections = 0
        self.open = True
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if not self.open:
                    client.close()
                    continue
                target = self.targets[self.connections % len(self.targets)] if len(self.targets) > 1 else self.target
                self.connections += 1
                try:
                    upstream = socket.create_connection(("127.0.0.1", target), timeout=5)
                except OSError:
                    client.close()
                    continue
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        """Drops every connection; new ones are refused until ``restore``."""
        with self.lock:
            self.open = False
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.sockets.clear()

    def restore(self, target: int | None = None) -> None:
        with self.lock:
            if target is not None:
                self.target = target
                self.targets = [target]
            self.open = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


CLUSTER_ENV = {
    "PARLEY_REDIS_URL": os.environ.get("PARLEY_TEST_REDIS_URL", ""),
    "PARLEY_DATABASE_URL": os.environ.get("PARLEY_TEST_DATABASE_URL", ""),
    "PARLEY_INSTANCE_TTL_MS": "1000",
}
needs_cluster = pytest.mark.skipif(
    not (CLUSTER_ENV["PARLEY_REDIS_URL"] and CLUSTER_ENV["PARLEY_DATABASE_URL"]),
    reason="needs PARLEY_TEST_REDIS_URL and PARLEY_TEST_DATABASE_URL",
)


@pytest.fixture
def relay():
    relays: list[Relay] = []

    def make(target: int, *others: int) -> Relay:
        relays.append(Relay(target, *others))
        return relays[-1]

    yield make
    for r in relays:
        r.close()
