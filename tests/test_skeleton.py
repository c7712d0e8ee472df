"""The bench's skeleton job (jobs/skeleton_job.py) runs on a real broker and MiniCluster: one
ranking record per event, and the interactions loop through its topic to the item branch."""

from __future__ import annotations

import json
import time

import pytest

from streamrank.kafka_local import create_topics
from streamrank.replay import make_producer, produce
from streamrank.watch import JobProcess, RankingsReader, TopicReader
from tests.conftest import isolated_settings

pytestmark = [pytest.mark.kafka, pytest.mark.flink]


@pytest.mark.parametrize("batch_ms", [0, 20])
def test_skeleton_job_covers_every_event(kafka_bootstrap, tmp_path, batch_ms):
    """Both ways the events topic reaches the ranker: record by record, and in batches of
    each user's records (``flink.event_batch_ms``, gathered in Flink SQL)."""
    settings = isolated_settings(kafka_bootstrap, tmp_path, **{"flink.event_batch_ms": batch_ms})
    create_topics(settings.kafka)
    proc = JobProcess(settings, tmp_path / "skeleton.log", module="jobs.skeleton_job").start()
    rankings = RankingsReader(kafka_bootstrap, settings.kafka.topics.rankings)
    interactions = TopicReader(kafka_bootstrap, settings.kafka.topics.interactions)
    producer = make_producer(kafka_bootstrap)
    try:
        events = [{"event_id": f"sk-{i}", "user_id": f"u{i % 3}", "item_id": f"i{i % 5}",
                   "type": "click", "ts": 1_000 + i} for i in range(20)]
        produce(producer, settings.kafka.topics.events, events, "user_id", progress=False)
        assert rankings.wait_ranked([e["event_id"] for e in events], 180, job=proc) == 20, \
            proc.tail()
        # one ranking per event, each user's in the order produced
        for user in ("u0", "u1", "u2"):
            ids = [r["event_id"] for r in map(json.loads, (v for _, v, _ in rankings.records))
                   if r["user_id"] == user]
            assert ids == [e["event_id"] for e in events if e["user_id"] == user]
        deadline = time.monotonic() + 30
        while interactions.count() < 20 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sorted(bytes(k).decode() for k, _, _ in interactions.records) == \
            sorted(e["item_id"] for e in events)
    finally:
        producer.close()
        rankings.close()
        interactions.close()
        proc.stop()
