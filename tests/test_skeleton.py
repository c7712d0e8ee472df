"""The bench's skeleton job (jobs/skeleton_job.py) runs on a real broker and MiniCluster: one
ranking record per event, and the interactions loop through its topic to the item branch."""

from __future__ import annotations

import time

import pytest

from streamrank.kafka_local import create_topics
from streamrank.replay import make_producer, produce
from streamrank.watch import JobProcess, RankingsReader, TopicReader
from tests.conftest import isolated_settings

pytestmark = [pytest.mark.kafka, pytest.mark.flink]


def test_skeleton_job_covers_every_event(kafka_bootstrap, tmp_path):
    settings = isolated_settings(kafka_bootstrap, tmp_path)
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
