"""Parley's web client in real headless Chromium, against a real `parley serve`.

Run with `bash Tests/browser/run.sh` (installs what is missing) or
`python3 -m pytest -q Tests/browser` from the repository root.
"""

from __future__ import annotations

import pytest
from selenium.common.exceptions import NoAlertPresentException, TimeoutException, UnexpectedAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

import os
import subprocess

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys

from conftest import PHONE, RECONNECT_WAIT, ChatPage
from parley_harness import PARLEY_BIN, ParleyGateway, ParleyServer, new_driver

ROOM = "general"


def open_pair(browser) -> tuple[ChatPage, ChatPage]:
    alice = browser("alice")
    bob = browser("bob")
    alice.join(ROOM)
    bob.join(ROOM)
    return alice, bob


def exchange(sender: ChatPage, text: str, *others: ChatPage) -> int:
    """Sends from `sender`, waits until every page shows it; returns its seq."""
    sender.send(text)
    mine = sender.wait_message(text, author=sender.label)
    assert mine["own"], f"{sender.label}'s own message is not marked .own: {mine}"
    for page in others:
        theirs = page.wait_message(text, author=sender.label)
        assert not theirs["own"], f"{sender.label}'s message is .own in {page.label}'s page: {theirs}"
        assert theirs["seq"] == mine["seq"], (mine, theirs)
    return mine["seq"]


def assert_conversation(page: ChatPage, expected: list[tuple[str, str]]) -> list[tuple[int, str]]:
    """Every message of the conversation exactly once, in seq order, nothing left pending."""
    msgs = page.messages(ROOM)
    seqs = [m["seq"] for m in msgs]
    assert len(seqs) == len(set(seqs)), f"{page.label}: duplicate data-seq in {seqs}"
    assert seqs == sorted(seqs), f"{page.label}: timeline not in seq order: {seqs}"
    assert seqs == list(range(1, len(expected) + 1)), f"{page.label}: seqs {seqs}, expected 1..{len(expected)}"
    got = [(m["author"], m["content"]) for m in msgs]
    assert got == expected, f"{page.label}: timeline {got}\nexpected {expected}"
    assert page.pending() == [], f"{page.label}: messages still pending: {page.pending()}"
    for m in msgs:
        assert m["own"] == (m["author"] == page.label), f"{page.label}: wrong .own on {m}"
    return [(m["seq"], m["content"]) for m in msgs]


# ---------------------------------------------------------------------------------------------
# a. two people: presence, typing, messages both ways
# ---------------------------------------------------------------------------------------------


def test_two_users_presence_typing_and_messages(browser):
    alice, bob = open_pair(browser)

    for page in (alice, bob):
        page.until(lambda d, p=page: {"alice", "bob"} <= set(p.presence()),
                   f"#presence-list lacks alice or bob: {page.presence()}")
    assert alice.presence() == ["alice", "bob"] and bob.presence() == ["alice", "bob"]

    # Typing shows on the other side, and only there.
    alice.type("Hi bob, how")
    bob.until(lambda d: "alice is typing" in bob.typing_text(),
              f"#typing-indicator never showed alice typing (text: {bob.typing_text()!r})")
    assert "alice" not in alice.typing_text(), "alice sees herself typing"

    # Sending the draft delivers it and clears the indicator.
    alice.clickable("#composer-send").click()
    text = "Hi bob, how"
    first = alice.wait_message(text, author="alice")
    assert first["own"] and first["seq"] == 1, first
    got = bob.wait_message(text, author="alice")
    assert not got["own"] and got["seq"] == 1, got
    bob.until(lambda d: bob.typing_text() == "",
              f"typing indicator not cleared after alice's message: {bob.typing_text()!r}")

    reply = "Fine, thanks! And you?"
    assert exchange(bob, reply, alice) == 2
    assert_conversation(alice, [("alice", text), ("bob", reply)])
    assert_conversation(bob, [("alice", text), ("bob", reply)])


@pytest.mark.server_env(PARLEY_LARGE_ROOM_SIZE="1")
def test_large_room_presence_arrives_as_batched_updates(browser):
    """Past the large-room size, joins reach the others as one presence update a second."""
    alice, bob = open_pair(browser)
    # bob's join made the room large (2 > 1): alice learns of him from a `presence` update.
    alice.until(lambda d: alice.presence() == ["alice", "bob"], f"alice's list: {alice.presence()}")
    carol = browser("carol")
    carol.join(ROOM)
    for page in (alice, bob, carol):
        page.until(lambda d, p=page: p.presence() == ["alice", "bob", "carol"], f"{page.label}'s list: {page.presence()}")
        page.until(lambda d, p=page: p.js("return document.getElementById('presence-count').textContent;") == "(3)",
                   f"{page.label}'s count")
    notices = alice.js("return Array.from(document.querySelectorAll('li.notice'), (li) => li.textContent);")
    assert "carol joined" in notices, notices
    # The conversation itself is unaffected.
    assert exchange(carol, "hello, big room", alice, bob) == 1


# ---------------------------------------------------------------------------------------------
# b. the server restarts mid-conversation: nothing lost, nothing doubled, order kept
# ---------------------------------------------------------------------------------------------


def test_server_restart_mid_conversation(browser, parley_server):
    alice, bob = open_pair(browser)
    expected: list[tuple[str, str]] = []

    for sender, receiver, text in (
        (alice, bob, "Before the restart, one"),
        (bob, alice, "Before the restart, two"),
        (alice, bob, "Before the restart, three"),
    ):
        exchange(sender, text, receiver)
        expected.append((sender.label, text))

    port = parley_server.port
    code = parley_server.stop()
    assert code == 0, f"parley exited with {code} on SIGTERM\n{parley_server.log_tail()}"
    for page in (alice, bob):
        page.until(lambda d, p=page: p.connection_state() in ("reconnecting", "offline", "connecting"),
                   "the page never noticed the server went away")

    # Written while the server is down: it waits in the outbox, shown as pending.
    offline_text = "Sent while the server was down"
    alice.send(offline_text)
    alice.until(lambda d: offline_text in alice.pending(), "the offline message is not shown as pending")
    assert all(m["content"] != offline_text for m in alice.messages()), "unsent message got a seq"
    expected.append(("alice", offline_text))

    parley_server.start(port=port)
    assert parley_server.port == port
    for page in (alice, bob):
        page.wait_online(timeout=RECONNECT_WAIT)
        page.until(lambda d, p=page: p.state()["rooms"][ROOM]["joined"], "never rejoined after restart",
                   timeout=RECONNECT_WAIT)

    # The outbox is flushed on reconnect, exactly once.
    bob.wait_message(offline_text, author="alice", timeout=RECONNECT_WAIT)
    alice.wait_message(offline_text, author="alice", timeout=RECONNECT_WAIT)
    alice.until(lambda d: alice.pending() == [], f"still pending after reconnect: {alice.pending()}")

    for sender, receiver, text in (
        (bob, alice, "After the restart, bob"),
        (alice, bob, "After the restart, alice"),
        (bob, alice, "After the restart, bob again"),
    ):
        exchange(sender, text, receiver)
        expected.append((sender.label, text))

    seen_by_alice = assert_conversation(alice, expected)
    seen_by_bob = assert_conversation(bob, expected)
    assert seen_by_alice == seen_by_bob


# ---------------------------------------------------------------------------------------------
# c. message content is text, never markup
# ---------------------------------------------------------------------------------------------


def test_message_html_is_shown_as_text(browser):
    alice, bob = open_pair(browser)
    payload = "<img src=x onerror=alert(1)>"
    try:
        alice.send(payload)
        got = bob.wait_message(payload, author="alice")
        alice.wait_message(payload, author="alice")

        for page in (alice, bob):
            # A broken image's onerror fires asynchronously: give it a bounded chance to.
            try:
                WebDriverWait(page.driver, 1.5, poll_frequency=0.1).until(EC.alert_is_present())
                pytest.fail(f"an alert opened in {page.label}'s page: {page.driver.switch_to.alert.text!r}")
            except TimeoutException:
                pass
            with pytest.raises(NoAlertPresentException):
                page.driver.switch_to.alert  # noqa: B018 - the property raises when no alert is open
            assert page.driver.find_elements(By.CSS_SELECTOR, "#messages img") == [], \
                f"an <img> element was created in {page.label}'s #messages"

        content = bob.driver.find_element(By.CSS_SELECTOR, f'#messages .message[data-seq="{got["seq"]}"] .content')
        assert content.get_attribute("textContent") == payload
        assert content.text == payload  # visible as literal text too
    except UnexpectedAlertPresentException as err:
        pytest.fail(f"the message's markup ran: an alert opened ({err.alert_text!r})")


# ---------------------------------------------------------------------------------------------
# d. phone width
# ---------------------------------------------------------------------------------------------


def test_phone_width_is_usable(browser):
    phone = browser("alice", size=PHONE, mobile=True, scale=2)
    assert phone.js("return [innerWidth, innerHeight];") == list(PHONE)
    phone.join(ROOM)  # through the menu button: the sidebar is off-canvas at this width

    composer = phone.visible("#composer-input")
    send = phone.visible("#composer-send")
    for element in (composer, send):
        rect = phone.js("const r = arguments[0].getBoundingClientRect();"
                        "return {left: r.left, right: r.right, top: r.top, bottom: r.bottom};", element)
        assert rect["left"] >= 0 and rect["right"] <= PHONE[0] and rect["top"] >= 0 and rect["bottom"] <= PHONE[1], \
            f"{element.get_attribute('id')} is outside the {PHONE} viewport: {rect}"
    overflow = phone.js("return document.documentElement.scrollWidth - innerWidth;")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px at phone width"

    text = "Typed on a phone"
    phone.send(text)
    msg = phone.wait_message(text, author="alice")
    assert msg["own"] and msg["seq"] == 1
    bubble = phone.driver.find_element(By.CSS_SELECTOR, f'#messages .message[data-seq="{msg["seq"]}"] .content')
    assert bubble.is_displayed()
    right = phone.js("return arguments[0].getBoundingClientRect().right;", bubble)
    assert right <= PHONE[0], f"the message bubble overflows the screen (right edge {right})"


# ---------------------------------------------------------------------------------------------
# f. direct messages: opened by naming someone, announced to them on every device, read once
# ---------------------------------------------------------------------------------------------


def test_direct_messages_with_badges_on_every_device(browser):
    alice = browser("alice")
    phone = browser("bob")
    laptop = browser("bob")
    for page in (phone, laptop):
        page.join(ROOM)
    dm = "dm:alice:bob"

    # Alice opens the DM by naming bob; it is shown as @bob.
    field = alice.visible("#room-input")
    field.clear()
    field.send_keys("@bob")
    alice.clickable("#room-join").click()
    alice.until(lambda d: alice.state()["currentRoom"] == dm, "the DM never became alice's current room")
    alice.until(lambda d: alice.state()["rooms"].get(dm, {}).get("joined"), "alice never joined the DM")
    assert alice.driver.find_element(By.ID, "room-title").text == "@bob"
    alice.send("psst, bob")
    alice.wait_message("psst, bob", author="alice")

    # Bob joined nothing: the DM appears in his list with a badge, on both of his devices.
    def badge(page: ChatPage) -> str | None:
        found = page.driver.find_elements(By.CSS_SELECTOR, f'#room-list li[data-room="{dm}"] .unread')
        return found[0].get_attribute("data-count") if found else None

    for page in (phone, laptop):
        page.until(lambda d, p=page: badge(p) == "1", f"no DM badge of 1 (badge: {badge(page)})")
        # The tab shows it too: in its title and on its icon.
        page.until(lambda d, p=page: p.driver.title.startswith("(1) "), f"title {page.driver.title!r}")
        page.until(lambda d, p=page: p.js("return document.querySelector('link[rel=icon]').dataset.unread;") == "1", "no count on the icon")
        entry = page.driver.find_element(By.CSS_SELECTOR, f'#room-list li[data-room="{dm}"]')
        shown = entry.find_element(By.CSS_SELECTOR, ".room-hash").text + entry.find_element(By.CSS_SELECTOR, ".room-name").text
        assert shown == "@alice", shown

    # Bob reads it on his phone: the laptop's badge clears at once.
    phone.driver.find_element(By.CSS_SELECTOR, f'#room-list li[data-room="{dm}"] .room-open').click()
    got = phone.wait_message("psst, bob", author="alice")
    assert not got["own"]
    laptop.until(lambda d: badge(laptop) == "0", f"the laptop kept its badge (badge: {badge(laptop)})")
    laptop.until(lambda d: laptop.js("return document.querySelector('link[rel=icon]').dataset.unread;") == "0", "the icon kept its count")

    # And he answers in it.
    phone.send("hi alice")
    alice.wait_message("hi alice", author="bob")


# ---------------------------------------------------------------------------------------------
# conversations: edit, delete, react, reply, mention, search, moderate
# ---------------------------------------------------------------------------------------------

SECRET = "browser-test-secret-0123456789abcdefghij"


def token(user: str, *roles: str) -> str:
    """A token minted by `parley token`, as a developer would."""
    args = [str(PARLEY_BIN), "token", "--user", user, "--secret", SECRET]
    if roles:
        args += ["--roles", ",".join(roles)]
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=30).stdout.strip()


def message_li(page: ChatPage, content_part: str):
    """The timeline entry whose content contains `content_part`."""
    def found(_):
        for li in page.driver.find_elements(By.CSS_SELECTOR, "#messages li.message"):
            found = li.find_elements(By.CSS_SELECTOR, ".content")
            if found and content_part in (found[0].get_attribute("textContent") or ""):
                return li
        return False
    return page.until(found, f"no message containing {content_part!r}")


def act(page: ChatPage, li, action: str):
    """Hovers the message and clicks one of its actions."""
    ActionChains(page.driver).move_to_element(li).perform()
    button = li.find_element(By.CSS_SELECTOR, f".message-actions .message-action.{action}")
    page.until(lambda d: button.is_displayed(), f"the {action} action never showed")
    button.click()


def reaction_count(page: ChatPage, content_part: str, emoji: str) -> int:
    chips = message_li(page, content_part).find_elements(By.CSS_SELECTOR, f'.reaction[data-emoji="{emoji}"] .reaction-count')
    return int(chips[0].text) if chips else 0


@pytest.mark.server_env(PARLEY_JWT_SECRET=SECRET)
def test_edit_react_reply_mention_search_delete_and_moderate(browser):
    alice = browser()
    alice.label = "alice"
    alice.sign_in_with_token(token("alice", "moderator"), "alice")
    bob = browser()
    bob.label = "bob"
    bob.sign_in_with_token(token("bob"), "bob")
    for page in (alice, bob):
        page.join(ROOM)

    # A mention of alice is highlighted for her.
    bob.send("helo @alice")
    alice.wait_message("helo @alice", author="bob")
    alice.until(lambda d: message_li(alice, "helo").find_elements(By.CSS_SELECTOR, ".mention-me"), "@alice is not highlighted")

    # Bob fixes his typo in place; both see the new text and the edited mark.
    act(bob, message_li(bob, "helo"), "edit")
    field = bob.visible(".edit-form .edit-input")
    field.clear()
    field.send_keys("hello @alice", Keys.ENTER)
    for page in (alice, bob):
        page.wait_message("hello @alice", author="bob")
        page.until(lambda d, p=page: message_li(p, "hello @alice").find_elements(By.CSS_SELECTOR, ".edited"), "no (edited) mark")

    # Reactions: alice picks one, bob adds his and takes it back.
    act(alice, message_li(alice, "hello @alice"), "react")
    alice.clickable('.reaction-picker .message-action[data-emoji="👍"]').click()
    for page in (alice, bob):
        page.until(lambda d, p=page: reaction_count(p, "hello @alice", "👍") == 1, "👍 never counted 1")
    message_li(bob, "hello @alice").find_element(By.CSS_SELECTOR, '.reaction[data-emoji="👍"]').click()
    alice.until(lambda d: reaction_count(alice, "hello @alice", "👍") == 2, "bob's 👍 never reached alice")
    message_li(bob, "hello @alice").find_element(By.CSS_SELECTOR, '.reaction[data-emoji="👍"]').click()
    alice.until(lambda d: reaction_count(alice, "hello @alice", "👍") == 1, "bob's 👍 was never taken back")

    # Alice replies with a quote, and mentions bob with the autocomplete.
    act(alice, message_li(alice, "hello @alice"), "reply")
    alice.visible("#reply-bar")
    alice.type("@b")
    option = alice.visible('#mention-list li[data-user="bob"]')
    assert option.text == "@bob"
    alice.type(Keys.TAB)
    alice.until(lambda d: alice.driver.find_element(By.ID, "composer-input").get_attribute("value") == "@bob ", "Tab did not complete @bob")
    alice.type("welcome aboard")
    alice.clickable("#composer-send").click()
    for page in (alice, bob):
        reply = message_li(page, "welcome aboard")
        page.until(lambda d, r=reply: "hello @alice" in r.find_element(By.CSS_SELECTOR, ".quote").get_attribute("textContent"),
                   "the reply shows no quote")
    assert alice.driver.find_element(By.ID, "reply-bar").get_attribute("hidden") is not None

    # Search finds bob's edited message, not its first version.
    bob.visible("#search-input").send_keys("hello", Keys.ENTER)
    result = bob.visible("#search-results li.search-result")
    assert "hello @alice" in result.text and result.get_attribute("data-room") == ROOM
    bob.driver.find_element(By.ID, "search-input").clear()
    bob.driver.find_element(By.ID, "search-input").send_keys("helo", Keys.ENTER)
    bob.until(lambda d: "Nothing found" in bob.driver.find_element(By.ID, "search-status").text, "the old text was found")

    # Bob deletes his message: gone for both, and the reply's quote says so.
    act(bob, message_li(bob, "hello @alice"), "delete")
    message_li(bob, "hello @alice").find_element(By.CSS_SELECTOR, ".message-action.delete").click()
    for page in (alice, bob):
        page.until(lambda d, p=page: p.driver.find_elements(By.CSS_SELECTOR, "#messages li.message.deleted .tombstone"), "no tombstone")
        page.until(lambda d, p=page: "Deleted message" in message_li(p, "welcome aboard").find_element(By.CSS_SELECTOR, ".quote").get_attribute("textContent"),
                   "the quote still shows the deleted text")
        assert "hello @alice" not in page.driver.find_element(By.ID, "messages").text

    # Alice moderates: bob is muted, his next message is refused with the reason, and both see why.
    bob.send("spam spam")
    spam = message_li(alice, "spam spam")
    assert not bob.driver.find_elements(By.CSS_SELECTOR, "#messages .message-action.mute"), "bob is no moderator"
    act(alice, spam, "mute")
    for page in (alice, bob):
        page.until(lambda d, p=page: any("muted" in n.text for n in p.driver.find_elements(By.CSS_SELECTOR, "#messages li.notice.moderation")),
                   "no moderation notice")
    bob.send("more spam")
    bob.until(lambda d: "muted" in bob.driver.find_element(By.CSS_SELECTOR, "#messages li.pending.failed .status").text,
              "bob's message was not refused as muted")

    # Alice lifts the mute from its notice; bob may post again.
    notice = next(n for n in alice.driver.find_elements(By.CSS_SELECTOR, "#messages li.notice.moderation") if "muted" in n.text)
    notice.find_element(By.CSS_SELECTOR, ".message-action.unmute").click()
    bob.until(lambda d: any("unmuted" in n.text for n in bob.driver.find_elements(By.CSS_SELECTOR, "#messages li.notice.moderation")),
              "bob never saw the unmute")
    bob.send("thanks")
    alice.wait_message("thanks", author="bob")


# ---------------------------------------------------------------------------------------------
# files, images and voice messages
# ---------------------------------------------------------------------------------------------


def png_file(path, width: int, height: int) -> str:
    """A real PNG (solid colour) the browser can decode."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes([40, 120, 200]) * width for _ in range(height))
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    path.write_bytes(data)
    return str(path)


PASTE_JS = """
const [b64, name] = arguments;
const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const data = new DataTransfer();
data.items.add(new File([bytes], name, { type: 'image/png' }));
document.getElementById('composer-input').dispatchEvent(new ClipboardEvent('paste', { clipboardData: data, bubbles: true, cancelable: true }));
"""


def test_images_by_picker_and_paste_and_a_voice_message(browser, tmp_path):
    import base64

    alice, bob = open_pair(browser)
    # An image by the file picker and one pasted, sent with a caption.
    alice.driver.find_element(By.ID, "file-input").send_keys(png_file(tmp_path / "photo.png", 64, 48))
    pasted = (tmp_path / "pasted.png")
    png_file(pasted, 30, 20)
    alice.js(PASTE_JS, base64.b64encode(pasted.read_bytes()).decode(), "pasted.png")
    alice.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '#uploads li[data-state="done"]')) == 2, "the two uploads never finished")
    alice.send("two pictures")
    for page in (alice, bob):
        msg = message_li(page, "two pictures")
        page.until(lambda d, m=msg: len(m.find_elements(By.CSS_SELECTOR, ".attachment.image img")) == 2, "no two images")
        page.until(lambda d, m=msg: page.js(
            "return Array.from(arguments[0].querySelectorAll('.attachment.image img'), i => i.naturalWidth);", m) == [64, 30],
            "the images did not load at their size")
    assert alice.driver.find_element(By.ID, "uploads").get_attribute("hidden") is not None

    # A voice message from the fake microphone; bob plays it.
    alice.clickable("#record-start").click()
    alice.visible("#recorder")
    alice.until(lambda d: alice.driver.find_element(By.ID, "record-time").text in ("0:01", "0:02"), "the timer never ran")
    alice.clickable("#record-send").click()

    def voice(page):
        found = page.driver.find_elements(By.CSS_SELECTOR, "#messages .attachment.audio audio")
        return found[0] if found else False

    player = bob.until(lambda d: voice(bob), "bob never got the voice message")
    meta = bob.driver.find_element(By.CSS_SELECTOR, "#messages .attachment.audio .attachment-meta").text
    assert meta in ("0:01", "0:02", "0:03"), meta
    bob.js("arguments[0].play();", player)
    bob.until(lambda d: bob.js("return arguments[0].currentTime;", player) > 0.2, "the voice message does not play")

    # Held down and let go: recorded while held, sent on release.
    ActionChains(alice.driver).click_and_hold(alice.clickable("#record-start")).pause(1.6).release().perform()
    bob.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#messages .attachment.audio audio")) == 2, "the held recording never arrived")


# ---------------------------------------------------------------------------------------------
# notifications: visibility, muting, the in-page rule
# ---------------------------------------------------------------------------------------------

def api(server, method: str, path: str, body: dict | None = None):
    import json
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server.url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        text = answer.read().decode()
        return json.loads(text) if text and answer.headers.get("Content-Type", "").startswith("application/json") else text


def pushes_not_needed(server) -> int:
    import re

    match = re.search(r'^parley_pushes_total\{result="not_needed"\} (\d+)', api(server, "GET", "/metrics"), re.M)
    return int(match.group(1)) if match else 0


def test_a_visible_tab_holds_pushes_back_and_the_page_alerts_by_the_push_rules(browser, parley_server):
    bob = browser("bob")
    bob.join(ROOM)
    dm = "dm:alice:bob"
    push = lambda: bob.state()["push"]  # noqa: E731
    bob.until(lambda d: push()["worker"], "the service worker never registered")
    bob.until(lambda d: push()["visible"] is True, "the page never said it is visible")

    # Bob's tab is in front: a DM to him needs no push (the server knows, through Redis in a cluster).
    api(parley_server, "POST", f"/api/rooms/{dm}/messages", {"content": "are you there?", "user": "alice"})
    bob.until(lambda d: pushes_not_needed(parley_server) == 1, "the server pushed to a visible user")
    bob.until(lambda d: bob.state()["rooms"].get(dm, {}).get("count") == 1, "the DM never reached bob")

    # He mutes the DM with the bell in its header: the server keeps it.
    bob.driver.find_element(By.CSS_SELECTOR, f'#room-list li[data-room="{dm}"] .room-open').click()
    bob.until(lambda d: bob.state()["currentRoom"] == dm, "the DM never opened")
    bob.clickable("#mute-button").click()
    bob.until(lambda d: push()["muted"] == [dm], f"not muted: {push()}")
    assert api(parley_server, "GET", "/api/push/settings?user=bob")["mutedRooms"] == [dm]
    assert bob.driver.find_element(By.ID, "mute-button").get_attribute("aria-pressed") == "true"

    # The window minimized: bob's Parley tab is hidden, and says so.
    bob.driver.minimize_window()
    bob.until(lambda d: push()["visible"] is False, "the hidden page never said so")

    # Hidden: a plain room message and a muted DM arrive without an alert.
    api(parley_server, "POST", f"/api/rooms/{ROOM}/messages", {"content": "lunch?", "user": "alice"})
    api(parley_server, "POST", f"/api/rooms/{dm}/messages", {"content": "muted one", "user": "alice"})
    bob.until(lambda d: bob.state()["rooms"].get(dm, {}).get("count") == 2, "the muted DM never arrived")
    bob.until(lambda d: bob.state()["rooms"][ROOM]["count"] >= 1, "the room message never arrived")
    assert push()["alerts"] == 0, push()

    # Unmuted, the next DM alerts.
    bob.js("document.getElementById('mute-button').click();")
    bob.until(lambda d: push()["muted"] == [], f"not unmuted: {push()}")
    api(parley_server, "POST", f"/api/rooms/{dm}/messages", {"content": "loud one", "user": "alice"})
    bob.until(lambda d: push()["alerts"] == 1, f"no alert for the DM: {push()}")


def test_the_service_worker_shows_each_kind_of_push(browser, parley_server):
    """The web client's service worker, given pushes as the server sends them (decrypted: the
    browser's push service is not reachable here, so DevTools delivers them)."""
    import json

    bob = browser("bob")
    bob.until(lambda d: bob.state()["push"]["worker"], "the service worker never registered")
    driver = bob.driver
    driver.execute_cdp_cmd("Browser.grantPermissions", {"origin": parley_server.url, "permissions": ["notifications"]})
    driver.execute_cdp_cmd("ServiceWorker.enable", {})
    pushes = [
        {"type": "dm", "room": "dm:alice:bob", "from": "alice", "body": "are you there?", "id": "m1", "seq": 1},
        {"type": "mention", "room": "general", "from": "carol", "body": "@bob lunch?", "id": "m2", "seq": 7},
        {"type": "call", "room": "dm:alice:bob", "from": "alice", "call": "c1", "video": False},
    ]
    def deliver():
        for data in pushes:
            # Registration ids are small numbers; a push to an id with no worker goes nowhere.
            for registration in map(str, range(8)):
                driver.execute_cdp_cmd("ServiceWorker.deliverPushMessage", {"origin": parley_server.url, "registrationId": registration, "data": json.dumps(data)})

    def shown(_):
        return driver.execute_async_script(
            "const done = arguments[0];"
            "navigator.serviceWorker.ready.then((r) => r.getNotifications())"
            ".then((all) => done(all.map((n) => [n.title, n.body, n.tag, n.data && n.data.room])), () => done([]));"
        )

    def delivered(d):
        # Pushes that reach a worker not yet active are dropped (seen on a loaded CI machine):
        # deliver again until all three show. Each kind has its own tag, so a repeat replaces
        # its notification instead of adding one.
        if len(shown(d)) == 3:
            return True
        deliver()
        return False

    bob.until(delivered, f"notifications shown: {shown(None)}")
    assert sorted(shown(None)) == sorted([
        ["alice", "are you there?", "parley-dm:alice:bob", "dm:alice:bob"],
        ["carol mentioned you in #general", "@bob lunch?", "parley-general", "general"],
        ["alice is calling", "Voice call", "parley-call-c1", "dm:alice:bob"],
    ])


# ---------------------------------------------------------------------------------------------
# calls
# ---------------------------------------------------------------------------------------------

CLUSTER_ENV = {
    "PARLEY_REDIS_URL": os.environ.get("PARLEY_TEST_REDIS_URL", ""),
    "PARLEY_DATABASE_URL": os.environ.get("PARLEY_TEST_DATABASE_URL", ""),
}


def call_state(page: ChatPage):
    return page.state().get("call") or {}


def test_a_call_between_two_browsers_on_two_instances(browser, parley_server, tmp_path):
    """Alice calls bob from their DM; with Redis and PostgreSQL given, they are on two instances."""
    other = None
    if CLUSTER_ENV["PARLEY_REDIS_URL"] and CLUSTER_ENV["PARLEY_DATABASE_URL"]:
        parley_server.stop()
        parley_server.env.update(CLUSTER_ENV)
        parley_server.start()
        other = ParleyServer(tmp_path, env=CLUSTER_ENV)
        other.start()
    try:
        alice = browser("alice")
        if other:
            bob = ChatPage(new_driver(1280, 800), other.url, label="bob")
            bob.sign_in("bob")
        else:
            bob = browser("bob")
        field = alice.visible("#room-input")
        field.send_keys("@bob")
        alice.clickable("#room-join").click()
        alice.until(lambda d: alice.state()["currentRoom"] == "dm:alice:bob", "the DM never opened")
        alice.clickable("#call-button").click()
        bob.until(lambda d: call_state(bob).get("state") == "ringing", "bob's browser never rang")
        assert bob.driver.find_element(By.ID, "call-peer").text == "alice"
        bob.clickable("#call-accept").click()
        for page in (alice, bob):
            page.until(lambda d, p=page: call_state(p).get("ice") in ("connected", "completed") and call_state(p).get("state") == "connected",
                       f"no ICE connection: {call_state(page)}", timeout=30)
        alice.clickable("#call-mute").click()
        assert alice.driver.find_element(By.ID, "call-mute").get_attribute("aria-pressed") == "true"
        bob.clickable("#call-hangup").click()
        alice.until(lambda d: not call_state(alice), "alice's call did not end when bob hung up")
        assert alice.driver.find_element(By.ID, "call-screen").get_attribute("hidden") is not None
        if other:
            bob.driver.quit()
    finally:
        if other:
            other.stop()


def test_a_video_call_shows_each_side_the_other(browser):
    alice = browser("alice")
    bob = browser("bob")
    field = alice.visible("#room-input")
    field.send_keys("@bob")
    alice.clickable("#room-join").click()
    alice.until(lambda d: alice.state()["currentRoom"] == "dm:alice:bob", "the DM never opened")
    alice.clickable("#video-call-button").click()
    bob.until(lambda d: call_state(bob).get("state") == "ringing", "bob's browser never rang")
    assert call_state(bob)["video"] is True
    assert bob.driver.find_element(By.ID, "call-status").text == "Incoming video call"
    bob.clickable("#call-accept").click()
    for page in (alice, bob):
        # Chromium's fake camera draws frames: each side's large video shows the other's.
        page.until(lambda d, p=page: call_state(p).get("state") == "connected" and call_state(p).get("remoteVideo", 0) > 0,
                   f"no video from the other side: {call_state(page)}", timeout=30)
        assert page.driver.find_element(By.ID, "call-local").is_displayed()
    alice.clickable("#call-camera").click()
    assert alice.driver.find_element(By.ID, "call-camera").get_attribute("aria-pressed") == "true"
    assert alice.js("return document.getElementById('call-local').srcObject.getVideoTracks()[0].enabled;") is False
    alice.clickable("#call-hangup").click()
    bob.until(lambda d: not call_state(bob), "bob's call did not end when alice hung up")


# ---------------------------------------------------------------------------------------------
# the web client through `parley gateway` (WebSocket edge -> gRPC Chat -> parley serve)
# ---------------------------------------------------------------------------------------------


def test_the_web_client_through_a_gateway(parley_server, tmp_path):
    import re
    import urllib.request

    gateway = ParleyGateway(tmp_path / "gateway.log", parley_server, api=parley_server.url).start()
    url = gateway.url
    pages: list[ChatPage] = []
    try:
        for name in ("alice", "bob"):
            page = ChatPage(new_driver(1280, 800), url, label=name)
            pages.append(page)
            page.sign_in(name)
            page.join(ROOM)
        alice, bob = pages
        for page in pages:
            page.until(lambda d, p=page: {"alice", "bob"} <= set(p.presence()), f"no presence through the gateway: {page.presence()}")
        first = exchange(alice, "hello through the gateway", bob)
        second = exchange(bob, "and back", alice)
        assert (first, second) == (1, 2)
        assert_conversation(alice, [("alice", "hello through the gateway"), ("bob", "and back")])
        # The page's own origin is the gateway: its WebSocket and its API calls went there.
        assert alice.driver.execute_script("return location.origin") == url
        metrics = urllib.request.urlopen(url + "/ws-metrics", timeout=5).read().decode()
        assert re.search(r"^parley_gateway_connections 2(\.0)?$", metrics, re.M), metrics
        # A reload resumes from history through the gateway too.
        bob.driver.refresh()
        if bob.driver.find_elements(By.CSS_SELECTOR, "#login:not([hidden])"):
            bob.sign_in("bob")
        bob.join(ROOM)
        bob.wait_message("and back", author="bob")
        assert_conversation(bob, [("alice", "hello through the gateway"), ("bob", "and back")])
    finally:
        for page in pages:
            page.driver.quit()
        gateway.stop()
