"""Failures and upgrades on a real standalone Flink cluster (JobManager and TaskManager
processes from the apache-flink wheel) with the real broker: TaskManagers killed with SIGKILL
mid-replay, and stop-with-savepoint then restart at a higher parallelism. Both check, from
what was committed to Kafka (read_committed), that every event has exactly one ranking and
that every user's final state equals a failure-free replay."""

from __future__ import annotations

import json
import uuid

import pytest

from streamrank.chaos import Harness, chaos_settings, check, ChaosReport, reference_digests, \
    run_chaos
from streamrank.replay import produce, read_events, read_items
from tests.conftest import free_port, isolated_settings
from tests.synthetic import write_dataset

pytestmark = [pytest.mark.kafka, pytest.mark.cluster, pytest.mark.model]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("ml"), users_per_genre=20, ratings_per_user=10)


def test_chaos_two_taskmanager_kills_lose_and_double_nothing(kafka_bootstrap, dataset, tmp_path):
    settings = isolated_settings(kafka_bootstrap, tmp_path)
    # Paced so that both kills land mid-replay (the job recovers in ~10-20 s each time).
    report = run_chaos(settings, str(dataset), limit=None, kills=2, malformed=150, seed=11,
                       rate=15, checkpoint_ms=1000, timeout_s=900, progress=False)
    print(json.dumps(report.summary()))
    assert report.kills == 2 and report.restarts >= 2
    assert report.events == 600 and report.users == 60
    assert (report.lost, report.duplicates, report.state_mismatch_users) == (0, 0, 0), \
        (report.lost_examples, report.duplicate_examples, report.mismatch_examples)
    assert report.dlq == 150 and report.dlq_missing == 0
    assert len(report.dlq_reasons) >= 10  # every kind of bad input, each with its reason
    assert report.ok


def test_stop_with_savepoint_and_rescale_1_to_2(kafka_bootstrap, dataset, tmp_path):
    base = isolated_settings(kafka_bootstrap, tmp_path)
    tag = uuid.uuid4().hex[:8]
    settings = chaos_settings(base, tmp_path / "run", tag, parallelism=1, checkpoint_ms=1000,
                              rest_port=free_port(), rpc_port=free_port())
    settings = settings.replace(**{"kafka.partitions": 2})
    items, events = read_items(dataset), read_events(dataset)
    half = len(events) // 2
    first, second = events[:half], events[half:]
    with Harness(settings, tmp_path / "run") as h:
        job = h.submit()
        assert h.cluster.job(job)["vertices"][0]["parallelism"] == 1
        h.load_catalog(items, timeout_s=300)
        produce(h.producer, settings.kafka.topics.events, first, "user_id", progress=False)
        assert h.wait_ranked([e["event_id"] for e in first], timeout_s=300) == len(first)

        savepoint = h.cluster.stop_with_savepoint(job, str(tmp_path / "savepoints"))
        assert h.cluster.job_state(job) == "FINISHED"
        # Events sent while no job runs must be picked up by the restarted one.
        produce(h.producer, settings.kafka.topics.events, second[:50], "user_id",
                progress=False)
        job2 = h.cluster.submit(settings, savepoint=savepoint, parallelism=2)
        h.cluster.wait_job_running(job2, wait_s=180)
        vertices = h.cluster.job(job2)["vertices"]
        assert all(v["parallelism"] == 2 for v in vertices), vertices
        produce(h.producer, settings.kafka.topics.events, second[50:], "user_id",
                progress=False)
        assert h.wait_ranked([e["event_id"] for e in events], timeout_s=300) == len(events)

        report = check(ChaosReport(), h, events, reference_digests(items, events, settings), [])
    assert (report.lost, report.duplicates) == (0, 0), report.summary()
    # State restored at the new parallelism: every user continues from where they were.
    assert report.state_mismatch_users == 0, report.mismatch_examples
