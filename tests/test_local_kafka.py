"""The local broker's storage format: its cluster id must be one StorageTool accepts."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from jobs.runtime import kafka_classpath
from streamrank import kafka_local


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch):
    """One random id in 64 starts with '-' in URL-safe base64 (a first byte 0xf8-0xfb); the
    broker's setup must draw again rather than hand it to StorageTool."""
    drawn = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x10" + bytes(15))])
    monkeypatch.setattr(kafka_local.uuid, "uuid4", lambda: next(drawn))
    cluster_id = kafka_local.new_cluster_id()
    assert len(cluster_id) == 22 and not cluster_id.startswith("-")
    assert cluster_id == "EAAAAAAAAAAAAAAAAAAAAA"


def _format(tmp_path, cluster_id: str) -> subprocess.CompletedProcess:
    data = tmp_path / cluster_id.replace("-", "_")
    config = tmp_path / f"{data.name}.properties"
    config.write_text("process.roles=broker,controller\nnode.id=1\n"
                      "controller.quorum.voters=1@127.0.0.1:9999\n"
                      "listeners=PLAINTEXT://127.0.0.1:9998,CONTROLLER://127.0.0.1:9999\n"
                      "controller.listener.names=CONTROLLER\n"
                      f"log.dirs={data}\n")
    return subprocess.run(["java", "-cp", kafka_classpath(), "kafka.tools.StorageTool",
                           "format", "-t", cluster_id, "-c", str(config)],
                          capture_output=True, timeout=120)


@pytest.mark.kafka
def test_storage_tool_refuses_a_dash_id_and_takes_ours(tmp_path):
    """The failure behind a fresh broker that would not start now and then, on the real
    StorageTool of the bundled Kafka."""
    dash = "-" + kafka_local.new_cluster_id()[1:]
    assert _format(tmp_path, dash).returncode != 0
    ours = _format(tmp_path, kafka_local.new_cluster_id())
    assert ours.returncode == 0, ours.stderr.decode(errors="replace")[-2000:]
