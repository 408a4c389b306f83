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

import json
import os
import tempfile
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
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from parley_harness import ParleyServer, new_driver  # noqa: E402


WAIT = 10  # seconds: the bound of an ordinary UI wait
RECONNECT_WAIT = 30  # seconds: reconnect backoff (0.5 s doubling, jitter) plus server start-up

DESKTOP = (1280, 800)
PHONE = (375, 812)


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def parley_server(request):
    data_dir = Path(tempfile.mkdtemp(prefix="parley-browser-"))
    # `@pytest.mark.server_env(NAME="value")` starts the server with those settings.
    marker = request.node.get_closest_marker("server_env")
    server = ParleyServer(data_dir, env=dict(marker.kwargs) if marker else None)
    server.start()
    yield server
    server.finish(failed=getattr(request.node, "rep_call", None) and request.node.rep_call.failed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


# ---------------------------------------------------------------------------------------------
# The browser
# ---------------------------------------------------------------------------------------------


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

    def sign_in_with_token(self, token: str, user: str) -> None:
        self.driver.get(f"{self.base_url}/?token={token}")
        self.visible("#app")
        self.wait_online()
        assert self.state()["user"] == user

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


