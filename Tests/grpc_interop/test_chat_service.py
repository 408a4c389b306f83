"""Parley's ChatService driven by Python grpcio through stubs generated from proto/."""

from __future__ import annotations

import queue
import threading
import uuid

import grpc
import pytest

from chat.v1 import chat_pb2 as pb
from chat.v1 import chat_pb2_grpc as rpc
from parley_health_v1 import health_pb2, health_pb2_grpc


def room() -> str:
    return "py-" + uuid.uuid4().hex[:12]


def test_send_message_acks_stored_and_is_idempotent(channel):
    stub = rpc.ChatServiceStub(channel)
    name = room()
    ack = stub.SendMessage(pb.ChatMessage(room_id=name, sender_id="alice", content="  bonjour  ", client_id="c-1"))
    assert ack.message.seq == 1
    assert ack.message.content == "bonjour"
    assert ack.message.sender_id == "alice"
    assert ack.message.client_id == "c-1"
    assert len(ack.message.id) == 26
    assert ack.message.timestamp.seconds > 1_700_000_000
    assert not ack.duplicate

    retry = stub.SendMessage(pb.ChatMessage(room_id=name, sender_id="alice", content="bonjour", client_id="c-1"))
    assert retry.duplicate
    assert retry.message == ack.message

    stub.SendMessage(pb.ChatMessage(room_id=name, sender_id="bob", content="salut"))
    page = stub.GetHistory(pb.HistoryRequest(room_id=name))
    assert [m.seq for m in page.messages] == [1, 2]
    assert [m.sender_id for m in page.messages] == ["alice", "bob"]
    assert not page.has_more

    newest = stub.GetHistory(pb.HistoryRequest(room_id=name, limit=1))
    assert [m.seq for m in newest.messages] == [2]
    assert newest.has_more
    after = stub.GetHistory(pb.HistoryRequest(room_id=name, after_seq=1))
    assert [m.seq for m in after.messages] == [2]


def test_errors_are_grpc_status_codes(channel):
    stub = rpc.ChatServiceStub(channel)
    cases = [
        (lambda: stub.SendMessage(pb.ChatMessage(room_id="bad room", sender_id="a", content="x")), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: stub.SendMessage(pb.ChatMessage(room_id=room(), sender_id="a", content="   ")), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: stub.SendMessage(pb.ChatMessage(room_id=room(), content="who?")), grpc.StatusCode.UNAUTHENTICATED),
        (lambda: stub.GetHistory(pb.HistoryRequest(room_id=room(), limit=101)), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: stub.GetUser(pb.GetUserRequest(user_id="nobody-online")), grpc.StatusCode.NOT_FOUND),
    ]
    for call, code in cases:
        with pytest.raises(grpc.RpcError) as failure:
            call()
        assert failure.value.code() == code, failure.value.details()
        assert failure.value.details()


def test_join_chat_replays_since_then_streams_live(channel):
    stub = rpc.ChatServiceStub(channel)
    name = room()
    for index in range(1, 6):
        stub.SendMessage(pb.ChatMessage(room_id=name, sender_id="alice", content=f"m{index}"))

    events = stub.JoinChat(pb.JoinRequest(room_id=name, user_id="carol", since_seq=2))
    first = next(events)
    assert first.WhichOneof("event") == "ack"
    assert first.ack.join.room_id == name
    assert first.ack.join.seq == 5
    assert [u.user_id for u in first.ack.join.users] == ["carol"]
    replay = [next(events).message.seq for _ in range(3)]
    assert replay == [3, 4, 5]

    presence = stub.GetPresence(pb.PresenceRequest(room_id=name))
    assert [u.user_id for u in presence.users] == ["carol"]
    user = stub.GetUser(pb.GetUserRequest(user_id="carol"))
    assert user.online and list(user.rooms) == [name]

    stub.SendMessage(pb.ChatMessage(room_id=name, sender_id="alice", content="live"))
    live = next(events)
    assert live.WhichOneof("event") == "message"
    assert (live.message.seq, live.message.content) == (6, "live")
    events.cancel()


def test_chat_bidirectional_stream(channel):
    stub = rpc.ChatServiceStub(channel)
    name = room()
    commands: queue.Queue = queue.Queue()

    def requests():
        while True:
            command = commands.get()
            if command is None:
                return
            yield command

    events = stub.Chat(requests())
    received: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [received.put(e) for e in events], daemon=True).start()

    def reply(request_id: str):
        while True:
            event = received.get(timeout=10)
            kind = event.WhichOneof("event")
            if kind in ("ack", "error", "pong") and getattr(event, kind).request_id == request_id:
                return event

    commands.put(pb.ChatCommand(request_id="1", connect=pb.ConnectCommand(user="dave")))
    assert reply("1").ack.connect.user_id == "dave"
    commands.put(pb.ChatCommand(request_id="2", join=pb.JoinCommand(room_id=name)))
    assert reply("2").ack.join.seq == 0
    commands.put(pb.ChatCommand(request_id="3", message=pb.MessageCommand(room_id=name, content="hello", client_id="k")))
    ack = reply("3").ack.message
    assert (ack.message.seq, ack.message.content, ack.duplicate) == (1, "hello", False)
    echoed = received.get(timeout=10)
    assert echoed.WhichOneof("event") == "message"
    assert echoed.message == ack.message

    # A message from another client (unary) reaches the stream.
    stub.SendMessage(pb.ChatMessage(room_id=name, sender_id="erin", content="from unary"))
    other = received.get(timeout=10)
    assert (other.message.seq, other.message.sender_id) == (2, "erin")

    commands.put(pb.ChatCommand(request_id="4", ping=pb.PingCommand()))
    assert reply("4").WhichOneof("event") == "pong"
    commands.put(pb.ChatCommand(request_id="5", leave=pb.LeaveCommand(room_id="never-joined")))
    error = reply("5").error
    assert error.code == pb.ERROR_CODE_NOT_FOUND and error.reason == "not_found"
    commands.put(pb.ChatCommand(request_id="6"))
    assert reply("6").error.reason == "bad_request"
    commands.put(pb.ChatCommand(request_id="7", history=pb.HistoryRequest(room_id=name)))
    assert [m.seq for m in reply("7").ack.history.messages] == [1, 2]
    commands.put(None)
    events.cancel()


def test_upload_and_download_attachments_in_chunks(channel):
    """A microservice posts a report: upload in chunks, share it in a message, read it back."""
    stub = rpc.ChatServiceStub(channel)
    name = room()
    report = bytes((i * 31) % 256 for i in range(200_000))

    def chunks():
        yield pb.UploadChunk(room_id=name, name="report.bin", sender_id="reporter", data=report[:1000])
        for start in range(1000, len(report), 60_000):
            yield pb.UploadChunk(data=report[start:start + 60_000])

    attachment = stub.UploadAttachment(chunks())
    assert attachment.size == len(report) and attachment.name == "report.bin"
    assert attachment.type == "application/octet-stream" and attachment.url == f"/api/attachments/{attachment.id}"
    ack = stub.SendMessage(pb.ChatMessage(room_id=name, sender_id="reporter", attachment_ids=[attachment.id]))
    assert ack.message.content == "" and [a.id for a in ack.message.attachments] == [attachment.id]

    parts = list(stub.DownloadAttachment(pb.DownloadRequest(attachment_id=attachment.id)))
    assert parts[0].attachment.id == attachment.id and not parts[0].data
    assert b"".join(p.data for p in parts[1:]) == report
    assert all(len(p.data) <= 65536 for p in parts)
    ranged = list(stub.DownloadAttachment(pb.DownloadRequest(attachment_id=attachment.id, offset=65_000, length=100)))
    assert b"".join(p.data for p in ranged[1:]) == report[65_000:65_100]

    with pytest.raises(grpc.RpcError) as failure:
        list(stub.DownloadAttachment(pb.DownloadRequest(attachment_id="01NOSUCHATTACHMENT")))
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as failure:
        list(stub.DownloadAttachment(pb.DownloadRequest(attachment_id=attachment.id, offset=len(report) + 1)))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_service(channel):
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    served = health.Check(health_pb2.HealthCheckRequest(service="chat.v1.ChatService"))
    assert served.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as failure:
        health.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lets_a_generic_client_call_without_proto_files(channel):
    """What grpcurl does: discover the services through reflection, then call one with
    messages built from the reflected descriptors alone (no generated stubs)."""
    from google.protobuf import descriptor_pool, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {"chat.v1.ChatService", "grpc.health.v1.Health"} <= services
    pool = descriptor_pool.DescriptorPool(database)
    service = pool.FindServiceByName("chat.v1.ChatService")
    assert {m.name for m in service.methods} >= {"GetUser", "SendMessage", "GetHistory", "JoinChat", "Chat", "GetPresence"}

    request_type = message_factory.GetMessageClass(pool.FindMessageTypeByName("chat.v1.ChatMessage"))
    ack_type = message_factory.GetMessageClass(pool.FindMessageTypeByName("chat.v1.MessageAck"))
    send = channel.unary_unary(
        "/chat.v1.ChatService/SendMessage",
        request_serializer=request_type.SerializeToString,
        response_deserializer=ack_type.FromString,
    )
    ack = send(request_type(room_id=room(), sender_id="reflector", content="found you"))
    assert ack.message.seq == 1 and ack.message.content == "found you"
