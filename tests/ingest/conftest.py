from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from ingest.server import IngestNode
from postwarden.config import load_settings
from postwarden.local_services import free_port


def ingest_settings(bootstrap: str, tmp_path: Path, **extra: str):
    env = {
        "POSTWARDEN_BOOTSTRAP_SERVERS": bootstrap,
        "POSTWARDEN_SMTP_PORT": str(free_port()),
        "POSTWARDEN_HEALTH_PORT": str(free_port()),
        "POSTWARDEN_PRODUCE_TIMEOUT": "2",
        "POSTWARDEN_DATA_DIR": str(tmp_path),
        "POSTWARDEN_NODE_NAME": "test-node",
        **extra,
    }
    return load_settings(env)


@pytest.fixture
async def ingest_node(broker, tmp_path):
    node = IngestNode(ingest_settings(broker.bootstrap, tmp_path))
    await node.start()
    yield node
    with contextlib.suppress(Exception):
        await node.stop(drain_seconds=1)
