"""What the Python test suites (browser, Socket.IO) share: a real ``parley serve`` process and
headless Chromium sessions (system chromedriver, so Selenium Manager never downloads anything).

Environment overrides: ``PARLEY_BIN`` (server binary), ``PARLEY_TEST_PUBLIC_DIR`` (web client
folder), ``CHROME_BIN`` (browser), ``CHROMEDRIVER`` (driver).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

# Never let Selenium Manager reach the network: the driver and browser are given explicitly.
os.environ.setdefault("SE_OFFLINE", "true")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PARLEY_BIN = Path(os.environ.get("PARLEY_BIN", REPO / ".build" / "debug" / "parley"))
PUBLIC_DIR = Path(os.environ.get("PARLEY_TEST_PUBLIC_DIR", REPO / "Sources" / "ParleyServer" / "Public"))
CHROME_BIN = os.environ.get("CHROME_BIN") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
LISTEN_RE = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


class ParleyServer:
    """One ``parley serve`` at a time on a fixed data dir; ``restart`` keeps the same port."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, public_dir: Path | None = None):
        self.data_dir = data_dir
        self.public_dir = public_dir or PUBLIC_DIR
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.log_path: Path | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_port(self) -> int:
        """The gRPC port from the log. The gRPC server starts beside the HTTP one, so its line
        may come after the server is already answering HTTP: wait for it (bounded)."""
        deadline = time.monotonic() + 30
        while True:
            match = re.search(r"gRPC listening on [0-9.]+:(\d+)", self.log_path.read_text(errors="replace"))
            if match:
                return int(match.group(1))
            if time.monotonic() > deadline:
                raise RuntimeError(f"no 'gRPC listening on' line within 30 s\n{self.log_tail()}")
            time.sleep(0.05)

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
            "--public-dir", str(self.public_dir),
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

    def finish(self, failed: bool) -> None:
        """Ends the server (SIGTERM, or SIGKILL with ``kill``), prints its log if the test
        failed, and removes its data dir."""
        try:
            self.stop()
        finally:
            if failed:
                print(f"\n--- parley log ({self.log_path}) ---\n{self.log_tail()}")
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path or not self.log_path.exists():
            return "(no server log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


class ParleyGateway:
    """A ``parley gateway`` in front of servers' gRPC ports (``upstreams``: ParleyServer or
    ``host:port``), with the same environment as the server it fronts. ``url`` is its HTTP
    address, so a test written against a server runs through the gateway unchanged."""

    def __init__(self, log_path: Path, *upstreams, api: str | None = None, env: dict[str, str] | None = None,
                 args: list[str] | None = None):
        self.log_path = log_path
        self.upstreams = [u if isinstance(u, str) else f"127.0.0.1:{u.grpc_port}" for u in upstreams]
        self.api = api
        self.env = {**os.environ, **(env or {})}
        self.args = args or []
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ParleyGateway":
        wait_for_binary()
        cmd = [str(PARLEY_BIN), "gateway", "--host", "127.0.0.1", "--port", "0", "--upstream", ",".join(self.upstreams), *self.args]
        if self.api:
            cmd += ["--api-upstream", self.api]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            match = re.search(r"gateway listening on http://127\.0\.0\.1:(\d+)", text)
            if match and "upstream is up" in text:
                self.port = int(match.group(1))
                return self
            assert self.proc.poll() is None, f"the gateway exited: {text}"
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"the gateway did not start: {self.log_path.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else ["(no gateway log)"]
        return "\n".join(text[-lines:])


def wait_for_binary(timeout: float = 60) -> None:
    """The binary may briefly vanish while a build relinks it."""
    deadline = time.monotonic() + timeout
    while not (PARLEY_BIN.is_file() and os.access(PARLEY_BIN, os.X_OK)):
        if time.monotonic() > deadline:
            pytest.fail(f"no parley binary at {PARLEY_BIN} (build it, or set PARLEY_BIN)")
        time.sleep(0.5)


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
        # A microphone that plays a tone, granted without a prompt (voice messages).
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        # Calls between two headless browsers on one machine: real local addresses, not mDNS names.
        "--disable-features=WebRtcHideLocalIpsWithMdns",
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
