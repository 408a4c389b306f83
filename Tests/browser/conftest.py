"""Shared fixtures for Parley's real-browser tests.

* ``parley_server``: a real ``parley serve`` process on 127.0.0.1 with a temporary data dir,
  serving the web client straight from ``Sources/ParleyServer/Public`` (so the tests check the
  sources, not a possibly stale copy in ``.build``), stopped with SIGTERM.
* ``browser``: a factory of headless Chromium WebDriver sessions (system chromedriver, so
  Selenium Manager never downloads anything), each wrapped in a ``ChatPage`` helper.

Environment overrides: ``PARLEY_BIN`` (server binary), ``PARLEY_TEST_PUBLIC_DIR`` (web client
folder), ``CHROME_BIN`` (browser), ``CHROMEDRIVER`` (driver).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

# Never let Selenium Manager reach the network: the driver and browser are given explicitly.
os.environ.setdefault("SE_OFFLINE", "true")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    JavascriptException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PARLEY_BIN = Path(os.environ.get("PARLEY_BIN", REPO / ".build" / "debug" / "parley"))
PUBLIC_DIR = Path(os.environ.get("PARLEY_TEST_PUBLIC_DIR", REPO / "Sources" / "ParleyServer" / "Public"))
CHROME_BIN = os.environ.get("CHROME_BIN") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"

WAIT = 10  # seconds: the bound of an ordinary UI wait
RECONNECT_WAIT = 30  # seconds: reconnect backoff (0.5 s doubling, jitter) plus server start-up
LISTEN_RE = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")

DESKTOP = (1280, 800)
PHONE = (375, 812)


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


class ParleyServer:
    """One ``parley serve`` at a time on a fixed data dir; ``restart`` keeps the same port."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.log_path: Path | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int = 0, bind_retry_s: float = 10.0) -> None:
        wait_for_binary()
        deadline = time.monotonic() + bind_retry_s
        while True:
            ok, why = self._launch(port)
            if ok:
                return
            # The port may be briefly busy right after the previous process exited.
            if port == 0 or time.monotonic() > deadline:
                raise RuntimeError(f"parley did not start on port {port}: {why}\n{self.log_tail()}")
            time.sleep(0.25)

    def _launch(self, port: int) -> tuple[bool, str]:
        self.starts += 1
        self.log_path = self.data_dir / f"server-{self.starts}.log"
        log = open(self.log_path, "wb")
        cmd = [
            str(PARLEY_BIN), "serve",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--grpc-port", "0",
            "--data-dir", str(self.data_dir),
            "--public-dir", str(PUBLIC_DIR),
        ]
        try:
            self.proc = self._popen(cmd, log)
        finally:
            log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            match = LISTEN_RE.search(self.log_path.read_text(errors="replace"))
            if match:
                self.port = int(match.group(1))
                self._wait_ready()
                return True, ""
            if self.proc.poll() is not None:
                return False, f"exited with {self.proc.returncode}"
            time.sleep(0.05)
        self.kill()
        return False, "no 'listening on' line within 30 s"

    def _popen(self, cmd: list[str], log, timeout: float = 120) -> subprocess.Popen:
        """A build relinking the binary makes it briefly missing or busy: wait and retry."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
            except OSError as err:
                if err.errno not in (errno.ETXTBSY, errno.ENOENT, errno.EACCES) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.url}/healthz never answered 200\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then wait; SIGKILL only if it hangs. Returns the exit code."""
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"parley ignored SIGTERM for {timeout} s\n{self.log_tail()}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart_same_port(self) -> None:
        port = self.port
        self.stop()
        self.start(port=port)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path or not self.log_path.exists():
            return "(no server log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def wait_for_binary(timeout: float = 60) -> None:
    """The binary may briefly vanish while a build relinks it."""
    deadline = time.monotonic() + timeout
    while not (PARLEY_BIN.is_file() and os.access(PARLEY_BIN, os.X_OK)):
        if time.monotonic() > deadline:
            pytest.fail(f"no parley binary at {PARLEY_BIN} (build it, or set PARLEY_BIN)")
        time.sleep(0.5)


@pytest.fixture
def parley_server(request):
    data_dir = Path(tempfile.mkdtemp(prefix="parley-browser-"))
    # `@pytest.mark.server_env(NAME="value")` starts the server with those settings.
    marker = request.node.get_closest_marker("server_env")
    server = ParleyServer(data_dir, env=dict(marker.kwargs) if marker else None)
    server.start()
    yield server
    failed = getattr(request.node, "rep_call", None) and request.node.rep_call.failed
    try:
        server.stop()
    finally:
        if failed:
            print(f"\n--- parley log ({server.log_path}) ---\n{server.log_tail()}")
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


# ---------------------------------------------------------------------------------------------
# The browser
# ---------------------------------------------------------------------------------------------


def chrome_options(width: int, height: int) -> webdriver.ChromeOptions:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROME_BIN
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-sync",
        "--lang=en-US",
        f"--window-size={width},{height}",
        # Several windows at once must all behave as in the foreground.
        "--disable-background-timer-throttling",
        "--disable-backgrounding-occluded-windows",
        "--disable-renderer-backgrounding",
    ):
        options.add_argument(arg)
    # Leave a JavaScript alert open so a test can see it (the default dismisses it).
    options.unhandled_prompt_behavior = "ignore"
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return options


def new_driver(width: int, height: int, mobile: bool = False, scale: float = 1) -> webdriver.Chrome:
    service = Service(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(service=service, options=chrome_options(width, height))
    set_viewport(driver, width, height, mobile=mobile, scale=scale)
    driver.set_page_load_timeout(20)
    driver.set_script_timeout(10)
    return driver


def set_viewport(driver, width: int, height: int, mobile: bool = False, scale: float = 1) -> None:
    """Exactly this CSS viewport (the window size alone leaves it to the headless shell)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile,
    })
    if mobile:
        driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True, "maxTouchPoints": 5})


# Snapshot of the timeline, read in one script so nothing goes stale between reads.
# textContent, not Selenium's .text: the author of a grouped message is visually hidden.
SNAPSHOT_JS = """
const room = arguments[0];
return Array.from(document.querySelectorAll('#messages li.message')).filter(
  (li) => !room || li.dataset.room === room).map((li) => ({
    seq: Number(li.dataset.seq),
    room: li.dataset.room,
    author: li.querySelector('.author') ? li.querySelector('.author').textContent : null,
    content: li.querySelector('.content') ? li.querySelector('.content').textContent : null,
    own: li.classList.contains('own'),
  }));
"""

PENDING_JS = """
return Array.from(document.querySelectorAll('#messages li.pending')).map(
  (li) => li.querySelector('.content').textContent);
"""


class ChatPage:
    """One person's tab: the Selenium hooks of the client, with bounded explicit waits."""

    def __init__(self, driver: webdriver.Chrome, base_url: str, label: str = ""):
        self.driver = driver
        self.base_url = base_url
        self.label = label

    # -- waiting ----------------------------------------------------------------------------

    def wait(self, timeout: float = WAIT) -> WebDriverWait:
        return WebDriverWait(self.driver, timeout, poll_frequency=0.05,
                             ignored_exceptions=(StaleElementReferenceException, JavascriptException))

    def until(self, condition, message: str, timeout: float = WAIT):
        return self.wait(timeout).until(condition, f"[{self.label}] {message}")

    def visible(self, css: str, timeout: float = WAIT):
        return self.until(EC.visibility_of_element_located((By.CSS_SELECTOR, css)), f"{css} not visible", timeout)

    def clickable(self, css: str, timeout: float = WAIT):
        return self.until(EC.element_to_be_clickable((By.CSS_SELECTOR, css)), f"{css} not clickable", timeout)

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    # -- reading ----------------------------------------------------------------------------

    def state(self) -> dict:
        return self.js("return window.parley.state();")

    def connection_state(self) -> str:
        return self.driver.find_element(By.ID, "connection-status").get_attribute("data-state")

    def messages(self, room: str | None = None) -> list[dict]:
        return self.js(SNAPSHOT_JS, room)

    def pending(self) -> list[str]:
        return self.js(PENDING_JS)

    def presence(self) -> list[str]:
        return self.js("return Array.from(document.querySelectorAll('#presence-list li[data-user]'),"
                       " (li) => li.dataset.user);")

    def typing_text(self) -> str:
        return self.js("return document.getElementById('typing-indicator').textContent;")

    # -- acting -----------------------------------------------------------------------------

    def sign_in(self, name: str) -> None:
        self.driver.get(self.base_url + "/")
        field = self.visible("#name-input")
        field.clear()
        field.send_keys(name)
        self.clickable("#name-submit").click()
        self.visible("#app")
        self.wait_online()
        assert self.state()["user"] == name

    def wait_online(self, timeout: float = WAIT) -> None:
        self.until(lambda d: self.connection_state() == "online",
                   "#connection-status never reached data-state=online", timeout)

    def join(self, room: str) -> None:
        if not self.driver.find_element(By.ID, "room-input").is_displayed():
            # Narrow screens keep the sidebar off-canvas behind the menu button.
            self.clickable("#sidebar-toggle").click()
        field = self.visible("#room-input")
        field.clear()
        field.send_keys(room)
        self.clickable("#room-join").click()
        # Present, not necessarily visible: on a phone the sidebar closes once the room opens.
        self.until(EC.presence_of_element_located((By.CSS_SELECTOR, f'#room-list li[data-room="{room}"]')),
                   f"{room} not in the room list")
        self.until(lambda d: self.state()["rooms"].get(room, {}).get("joined"), f"never joined {room}")
        self.until(lambda d: self.state()["currentRoom"] == room, f"{room} never became current")
        self.clickable("#composer-input")

    def type(self, text: str) -> None:
        self.clickable("#composer-input").send_keys(text)

    def send(self, text: str) -> None:
        """Types the message and presses the Send button (does not wait for delivery)."""
        field = self.clickable("#composer-input")
        field.send_keys(text)
        self.clickable("#composer-send").click()
        self.until(lambda d: field.get_attribute("value") == "", "the composer was not cleared after sending")

    def wait_message(self, content: str, author: str | None = None, timeout: float = WAIT) -> dict:
        """Waits until a delivered (sequenced) message with this content is in the timeline."""
        def found(_):
            for msg in self.messages():
                if msg["content"] == content and (author is None or msg["author"] == author):
                    return msg
            return False
        return self.until(found, f"message {content!r} by {author} never appeared in #messages", timeout)

    def console_log(self) -> str:
        try:
            entries = self.driver.get_log("browser")
        except WebDriverException:
            return "(no browser log)"
        return "\n".join(f"{e.get('level')} {e.get('message')}" for e in entries) or "(empty)"


@pytest.fixture
def browser(request, parley_server):
    """Factory: ``browser("alice")`` opens a new headless Chromium signed in as alice."""
    pages: list[ChatPage] = []

    def open_page(name: str | None = None, size=DESKTOP, mobile: bool = False, scale: float = 1) -> ChatPage:
        driver = new_driver(*size, mobile=mobile, scale=scale)
        page = ChatPage(driver, parley_server.url, label=name or f"page{len(pages) + 1}")
        pages.append(page)
        if name:
            page.sign_in(name)
        return page

    yield open_page

    failed = getattr(request.node, "rep_call", None) and request.node.rep_call.failed
    for page in pages:
        if failed:
            print(f"\n--- browser console of {page.label} ---\n{page.console_log()}")
            try:
                print(f"--- timeline of {page.label} ---\n{json.dumps(page.messages(), indent=1)}")
                print(f"pending: {page.pending()}  state: {page.state()}")
            except WebDriverException:
                pass
        try:
            page.driver.quit()
        except WebDriverException:
            pass


