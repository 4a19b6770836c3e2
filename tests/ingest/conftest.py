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


TENANT = "{id: %s, domains: [%s], relay_networks: [%s], downstream: [{host: 127.0.0.1}]%s}"


def tenants_yaml(tmp_path: Path, *tenants: str) -> str:
    """Writes a tenants file from TENANT-style entries; returns its path."""
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n" + "".join(f"  - {t}\n" for t in tenants))
    return str(path)


@pytest.fixture
async def make_node(broker, tmp_path):
    """Starts ingest nodes with extra POSTWARDEN_* settings; stops them after the test."""
    nodes: list[IngestNode] = []

    async def _make(**extra: str) -> IngestNode:
        node = IngestNode(ingest_settings(broker.bootstrap, tmp_path, **extra))
        await node.start()
        nodes.append(node)
        return node

    yield _make
    for node in nodes:
        with contextlib.suppress(Exception):
            await node.stop(drain_seconds=1)
