"""Screenshots of the web client in a realistic conversation, for docs/screenshots/.

Three people (alice, bob, carol) talk in #general; bob is typing and the others have read the
latest message, so the pictures show messages, a link, a join notice, grouping, the typing
indicator and a read receipt. alice's page is shot at desktop width (1280x800) and carol's at
phone width (390x844, device scale 2).

Run either way, from the repository root:
    python3 Tests/browser/screenshots.py          # a script: starts its own server
    python3 -m pytest -q Tests/browser -k screenshots
The output folder is docs/screenshots/ unless PARLEY_SCREENSHOT_DIR says otherwise.
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import ChatPage  # noqa: E402
from parley_harness import REPO, ParleyServer, new_driver  # noqa: E402

OUT_DIR = Path(os.environ.get("PARLEY_SCREENSHOT_DIR", REPO / "docs" / "screenshots"))
DESKTOP_SIZE = (1280, 800)
PHONE_SIZE = (390, 844)
PHONE_SCALE = 2
ROOM = "general"

CONVERSATION = [
    ("alice", "Morning all! Is the 2.4 release still on for 3 pm?"),
    ("carol", "Yes. The smoke tests are green on staging."),
    ("bob", "Release notes are up: https://example.com/parley/2.4/notes"),
    ("alice", "Great, thanks bob."),
    ("alice", "I will post in #ops once it is out."),
    ("carol", "Sounds good. I'm around until 6 if anything breaks."),
]
TYPING_DRAFT = "One more thing about the rollback pl"


def png_size(path: Path) -> tuple[int, int]:
    with open(path, "rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def take_screenshots(base_url: str, out_dir: Path = OUT_DIR) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    pages: list[ChatPage] = []
    try:
        def open_page(name, size, mobile=False, scale=1):
            page = ChatPage(new_driver(*size, mobile=mobile, scale=scale), base_url, label=name)
            pages.append(page)
            page.sign_in(name)
            page.join(ROOM)
            return page

        alice = open_page("alice", DESKTOP_SIZE)
        carol = open_page("carol", PHONE_SIZE, mobile=True, scale=PHONE_SCALE)
        bob = open_page("bob", (1024, 768))  # joins last: the others get a "bob joined" notice
        people = {"alice": alice, "bob": bob, "carol": carol}

        for author, text in CONVERSATION:
            people[author].send(text)
            for page in pages:
                page.wait_message(text, author=author)

        last = CONVERSATION[-1]
        # Read receipts: each page reports what it has seen; the others show "seen by".
        alice.until(lambda d: alice.js(
            "return Array.from(document.querySelectorAll('#messages .seen-by'), n => n.textContent);"
        ) == ["seen by bob"], "alice never showed 'seen by bob' under carol's last message")
        carol.until(lambda d: carol.js(
            "return Array.from(document.querySelectorAll('#messages .seen-by'), n => n.textContent);"
        ) == ["seen by alice, bob"], "carol never showed 'seen by alice, bob'")

        bob.type(TYPING_DRAFT)
        for page in (alice, carol):
            page.until(lambda d, p=page: p.typing_text() == "bob is typing…",
                       f"no typing indicator in {page.label}'s page")
            page.until(lambda d, p=page: sorted(p.presence()) == ["alice", "bob", "carol"],
                       f"presence list in {page.label}'s page is {page.presence()}")
            # As a person sitting in the room would see it: the newest messages in view, and no
            # hover or focus left on the Send button by the automated clicks.
            page.js("document.activeElement.blur();"
                    "const l = document.getElementById('messages'); l.scrollTop = l.scrollHeight;")
            ActionChains(page.driver).move_to_element(page.driver.find_element(By.ID, "room-title")).perform()

        shots = {"desktop": out_dir / "desktop.png", "phone": out_dir / "phone.png"}
        # bob's draft renews typing every 3 s; the server expires it after 5 s: shoot now.
        assert alice.driver.save_screenshot(str(shots["desktop"]))
        assert carol.driver.save_screenshot(str(shots["phone"]))
        for page in (alice, carol):
            assert page.typing_text() == "bob is typing…", "typing indicator gone before the shot"
            assert page.messages(ROOM)[-1]["content"] == last[1]
        return shots
    finally:
        for page in pages:
            try:
                page.driver.quit()
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass


def test_screenshots(parley_server):
    shots = take_screenshots(parley_server.url)
    assert png_size(shots["desktop"]) == DESKTOP_SIZE
    assert png_size(shots["phone"]) == (PHONE_SIZE[0] * PHONE_SCALE, PHONE_SIZE[1] * PHONE_SCALE)
    for path in shots.values():
        assert path.stat().st_size > 10_000, f"{path} looks empty"


def main() -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="parley-shots-"))
    server = ParleyServer(data_dir)
    try:
        server.start()
        shots = take_screenshots(server.url)
        for name, path in shots.items():
            print(f"{name}: {path} {png_size(path)[0]}x{png_size(path)[1]}")
        return 0
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
