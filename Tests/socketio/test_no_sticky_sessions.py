"""Socket.IO behind a load balancer without sticky sessions: a polling session lives on the
instance that opened it, and a request for it that lands on another instance is forwarded
there, so every request of a client may go to a different instance."""

from __future__ import annotations

import json
import re
import time
import urllib.request

from conftest import CLUSTER_ENV, needs_cluster
from test_python_client import Client, Polling, run


def forwarded(server) -> int:
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    match = re.search(r"^parley_socketio_forwarded_total (\d+)", text, re.M)
    return int(match.group(1)) if match else 0


@needs_cluster
def test_each_polling_request_on_another_instance(servers):
    a, b = servers(CLUSTER_ENV), servers(CLUSTER_ENV)
    # One bare session whose every request alternates between the two instances.
    client = Polling(a.url)
    client.open()
    assert client.sid.count(".") == 1  # <instance>.<random>
    bases = [b.url, a.url]

    def on(index: int) -> Polling:
        other = Polling(bases[index % 2])
        other.sid = client.sid
        return other

    assert on(0).post('40{"user":"roaming"}') == (200, "ok")
    status, packets = on(1).get()
    assert status == 200 and packets[0].startswith('40{"sid":'), packets
    room = f"lb{time.time_ns()}"  # the cluster's database outlives the test
    assert on(2).post(f'420["join",{{"room":"{room}"}}]', f'421["message",{{"room":"{room}","content":"via b"}}]') == (200, "ok")
    seen: list[str] = []
    for i in range(3, 13):
        if any(p.startswith("431[") for p in seen):
            break
        status, packets = on(i).get()
        assert status == 200, packets
        seen += packets
    ack = json.loads(next(p for p in seen if p.startswith("431["))[3:])[0]
    assert ack["content"] == "via b" and ack["seq"] == 1

    # Someone on the other instance talks to it; it hears, whichever instance it polls.
    async def other_side():
        bob = await Client().connect(b.url, "bob")
        await bob.ack("join", {"room": room})
        await bob.ack("message", {"room": room, "content": "from bob"})
        await bob.close()

    run(other_side())
    heard: list[str] = []
    for i in range(20):
        status, packets = on(i).get()
        assert status == 200, packets
        heard += packets
        if any("from bob" in p for p in heard):
            break
    assert any(p.startswith('42["message"') and "from bob" in p for p in heard), heard

    assert forwarded(b) >= 3 and forwarded(a) == 0
    # A session no instance holds is still unknown everywhere.
    ghost = Polling(b.url)
    ghost.sid = "nobody.abcdef"
    assert ghost.get()[0] == 400


@needs_cluster
def test_python_socketio_through_a_round_robin_balancer(servers, relay):
    a, b = servers(CLUSTER_ENV), servers(CLUSTER_ENV)
    balancer = relay(a.port, b.port)

    room = f"rr{time.time_ns()}"

    async def main():
        alice = await Client().connect(balancer.url, "alice", ["polling"])
        bob = await Client().connect(b.url, "bob")
        await alice.ack("join", {"room": room})
        await bob.ack("join", {"room": room})
        for i in range(5):
            await alice.ack("message", {"room": room, "content": f"a{i}"})
            await bob.ack("message", {"room": room, "content": f"b{i}"})
        got = [(await alice.next("message"))[0]["content"] for _ in range(10)]
        assert got == [f"{w}{i}" for i in range(5) for w in "ab"]
        await alice.close()
        await bob.close()

    run(main())
    # Its requests went over several connections, so to both instances, and the ones that
    # landed on the other instance were forwarded.
    assert balancer.connections >= 2
    assert forwarded(a) + forwarded(b) >= 1
