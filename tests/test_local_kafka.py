"""The local broker's storage format: its cluster id must be one StorageTool accepts."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from contracts.config import default_settings
from streamrank import kafka_local


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch):
    """One random id in 64 starts with '-' in URL-safe base64 (a first byte 0xf8-0xfb); the
    broker's setup must draw again rather than hand it to StorageTool."""
    drawn = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x10" + bytes(15))])
    monkeypatch.setattr(kafka_local.uuid, "uuid4", lambda: next(drawn))
    cluster_id = kafka_local.new_cluster_id()
    assert len(cluster_id) == 22 and not cluster_id.startswith("-")
    assert cluster_id == "EAAAAAAAAAAAAAAAAAAAAA"


def _broker(tmp_path, name: str) -> kafka_local.LocalBroker:
    return kafka_local.LocalBroker(dataclasses.replace(
        default_settings().local_kafka, data_dir=str(tmp_path / name)))


@pytest.mark.kafka
def test_storage_tool_refuses_a_dash_id_and_takes_ours(tmp_path):
    """The failure behind a fresh broker that would not start now and then, on the real
    StorageTool of the bundled Kafka, through the broker's own set-up."""
    dash = "-" + kafka_local.new_cluster_id()[1:]
    with pytest.raises(RuntimeError, match="formatting the broker's storage"):
        _broker(tmp_path, "dash").prepare(dash)
    broker = _broker(tmp_path, "ours")
    broker.prepare()
    assert (broker.data_dir / "data" / "meta.properties").exists()
