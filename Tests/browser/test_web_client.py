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

from conftest import PHONE, RECONNECT_WAIT, ChatPage

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
        entry = page.driver.find_element(By.CSS_SELECTOR, f'#room-list li[data-room="{dm}"]')
        shown = entry.find_element(By.CSS_SELECTOR, ".room-hash").text + entry.find_element(By.CSS_SELECTOR, ".room-name").text
        assert shown == "@alice", shown

    # Bob reads it on his phone: the laptop's badge clears at once.
    phone.driver.find_element(By.CSS_SELECTOR, f'#room-list li[data-room="{dm}"] .room-open').click()
    got = phone.wait_message("psst, bob", author="alice")
    assert not got["own"]
    laptop.until(lambda d: badge(laptop) == "0", f"the laptop kept its badge (badge: {badge(laptop)})")

    # And he answers in it.
    phone.send("hi alice")
    alice.wait_message("hi alice", author="bob")
