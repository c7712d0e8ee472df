"""Shared fixtures: a real local Kafka broker (started by the suite itself, never skipped) and
throwaway, uuid-named topics."""

from __future__ import annotations

import uuid

import pytest

from contracts.config import Settings, Topics, load_settings


from jobs.runtime import free_port  # noqa: F401  (the tests import it from here)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory) -> str:
    import dataclasses

    from contracts.config import default_settings
    from streamrank.kafka_local import LocalBroker

    broker = LocalBroker(dataclasses.replace(
        default_settings().local_kafka, port=free_port(), controller_port=free_port(),
        data_dir=str(tmp_path_factory.mktemp("kafka"))))
    broker.up(wait_s=90)
    yield broker.bootstrap
    broker.down()


def isolated_settings(bootstrap: str, tmp_path, **overrides) -> Settings:
    """Settings whose topics, consumer group, cache and checkpoints belong to one test."""
    tag = uuid.uuid4().hex[:8]
    base = {
        "kafka.bootstrap_servers": bootstrap,
        "kafka.group_id": f"streamrank-test-{tag}",
        "kafka.transactional_id_prefix": f"streamrank-test-{tag}",
        "model.cache_dir": str(tmp_path / "embedding-cache"),
        "model.device": "cpu",
        "flink.checkpoint_dir": str(tmp_path / "checkpoints"),
        "flink.checkpoint_interval_ms": 2000,
    }
    for role in Topics.roles():
        base[f"kafka.topics.{role}"] = f"{role.replace('_', '-')}-{tag}"
    base.update(overrides)
    return load_settings(overrides=base, environ={})
