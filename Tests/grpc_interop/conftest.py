"""Fixtures of the gRPC interop tests: Python stubs generated from Parley's own proto files with
grpcio-tools (a gRPC implementation nobody on the Parley side wrote), and a channel to the
server named by ``PARLEY_GRPC_TARGET`` (``host:port``, set by the Swift test that starts it).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import grpc
import pytest
from grpc_tools import protoc

REPOSITORY = Path(__file__).resolve().parents[2]


def _generate_stubs() -> Path:
    out = Path(tempfile.mkdtemp(prefix="parley-grpc-stubs-"))
    well_known = Path(protoc.__file__).parent / "_proto"
    # The health proto's own path (grpc/health/v1) would shadow grpcio's `grpc` package in
    # Python, so it is compiled from a copy under another folder; the service's wire name
    # (grpc.health.v1.Health) comes from its package line and does not change.
    health = out / "proto" / "parley_health_v1"
    health.mkdir(parents=True)
    shutil.copy(REPOSITORY / "proto/grpc/health/v1/health.proto", health / "health.proto")
    for include, proto in ((REPOSITORY / "proto", "chat/v1/chat.proto"), (out / "proto", "parley_health_v1/health.proto")):
        status = protoc.main([
            "grpc_tools.protoc",
            f"--proto_path={include}",
            f"--proto_path={well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            proto,
        ])
        assert status == 0, f"protoc failed on {proto}"
    return out


sys.path.insert(0, str(_generate_stubs()))


@pytest.fixture(scope="session")
def target() -> str:
    value = os.environ.get("PARLEY_GRPC_TARGET")
    if not value:
        pytest.skip("PARLEY_GRPC_TARGET is not set (the Swift test GRPCInteropTests starts a server and sets it)")
    return value


@pytest.fixture()
def channel(target: str):
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield channel
