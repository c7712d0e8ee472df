"""Operating streamrank like a Flink shop: the job on a standalone cluster started from the
wheel's scripts, its `streamrank` metrics in the REST API, the job graph in the web UI (a real
headless Chromium), SQL over the topics, and a clean `cluster down`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid

import numpy as np
import pytest
import yaml

from streamrank.chaos import Harness, chaos_settings
from streamrank.cluster import _alive, absolute_paths
from contracts.config import REPO_ROOT, to_dict
from streamrank.replay import produce, read_events, read_items
from tests.conftest import free_port, isolated_settings
from tests.screenshot import chromium_screenshot
from tests.synthetic import write_dataset

pytestmark = [pytest.mark.kafka, pytest.mark.cluster, pytest.mark.model]

SCREENSHOT = REPO_ROOT / ".run" / "screenshots" / "flink-job-graph.png"


def test_cluster_metrics_dashboard_sql_and_clean_shutdown(kafka_bootstrap, tmp_path):
    data = write_dataset(tmp_path / "ml", users_per_genre=5, ratings_per_user=8)
    settings = chaos_settings(isolated_settings(kafka_bootstrap, tmp_path), tmp_path / "run",
                              uuid.uuid4().hex[:8], parallelism=1, checkpoint_ms=1000,
                              rest_port=free_port(), rpc_port=free_port())
    prometheus = free_port()
    settings = settings.replace(**{"cluster.prometheus_port": prometheus})
    items, events = read_items(data), read_events(data)
    with Harness(settings, tmp_path / "run") as h:
        job = h.submit()
        assert h.cluster.job_state(job) == "RUNNING"
        h.load_catalog(items, timeout_s=300)
        produce(h.producer, settings.kafka.topics.events, events, "user_id", progress=False)
        for raw in (b"not json", b'{"type": "teleport", "user_id": "u", "item_id": "1", '
                                  b'"ts": 1}', b"\xff\xfe"):
            h.producer.send(settings.kafka.topics.events, key=b"junk", value=raw)
        h.producer.flush()
        assert h.wait_ranked([e["event_id"] for e in events], timeout_s=300) == len(events)

        # Our metric group, as the web UI and any REST client see it.
        deadline = time.monotonic() + 60
        metrics: dict = {}
        while time.monotonic() < deadline:
            metrics = h.cluster.operator_metrics(job)
            # The REST API's metric values lag by up to its fetch interval (10 s).
            if metrics.get("rank-users.streamrank.events_ranked", 0) >= len(events) and \
                    metrics.get("rank-users.streamrank.dlq_records", 0) >= 3 and \
                    metrics.get("parse-items.streamrank.items_in", 0) >= len(items) and \
                    "embed-items.streamrank.cache_hit_pct" in metrics:
                break
            time.sleep(2)
        print(json.dumps(metrics, indent=1))
        # Every event covered by a ranking; coalesced, by fewer rankings than events.
        assert metrics["rank-users.streamrank.events_ranked"] >= len(events)
        assert 0 < metrics["rank-users.streamrank.rankings_out"] <= len(events)
        assert metrics["rank-users.streamrank.events_in_rating"] >= len(events)
        assert metrics["rank-users.streamrank.dlq_records"] == 3
        assert metrics["parse-items.streamrank.items_in"] == len(items)
        assert metrics["rank-users.streamrank.catalog_items"] == len(items)
        assert "rank-users.streamrank.pending_events" in metrics
        assert metrics["embed-items.streamrank.embedded_texts"] + \
            metrics["embed-items.streamrank.cache_hits"] == len(items)
        assert 0 <= metrics["embed-items.streamrank.cache_hit_pct"] <= 100
        assert "embed-items.streamrank.embed_batch_ms_p99" in metrics
        assert metrics["rank-users.streamrank.ranking_us_p99"] > 0
        # Coalescing ran: windows were ranked, and each ranked at least one user.
        assert 0 < metrics["rank-users.streamrank.ranking_batches"] <= \
            metrics["rank-users.streamrank.batched_rankings"] <= len(events)

        # Users in state: RocksDB's key-count estimate of the ranker's state.
        ranker = next(v for v in h.cluster.job(job)["vertices"] if "rank-users" in v["name"])
        names = [m["id"] for m in h.cluster._get(
            f"/jobs/{job}/vertices/{ranker['id']}/subtasks/metrics")]
        assert any("estimate-num-keys" in n for n in names), names

        # The same metrics through the Prometheus reporter (one port per JM/TM process).
        scraped = ""
        for port in range(prometheus, prometheus + 4):
            try:
                scraped += urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                                  timeout=5).read().decode()
            except OSError:
                pass
        assert "flink_taskmanager_job_task_operator_streamrank_rankings_out" in scraped

        # The job graph in the Flink web UI, in a real browser.
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes(chromium_screenshot(h.cluster.job_page_url(job)))
        png = SCREENSHOT
        print(f"screenshot: {png}")
        import matplotlib.image as mpimg

        pixels = mpimg.imread(str(png))
        assert pixels.shape[0] >= 900 and pixels.shape[1] >= 1500
        assert float(np.std(pixels[..., :3])) > 0.05, "the screenshot is blank"

        # SQL over the topics: real rows, through the CLI in a process of its own (the Table
        # planner is bound to the Java thread that serves its py4j calls; see streamrank/sql.py).
        conf_file = tmp_path / "sql.yaml"
        conf_file.write_text(yaml.safe_dump(to_dict(absolute_paths(settings))))
        out, rows = _sql(conf_file, "SELECT reason, records FROM dlq_reasons ORDER BY reason")
        assert "| reason" in out and "not_json" in out
        assert dict(rows) == {"invalid_utf8": "1", "not_json": "1", "unknown_type": "1"}
        _, top = _sql(conf_file, "SELECT item_id, appearances FROM top_ranked_items "
                                 "ORDER BY appearances DESC LIMIT 3")
        assert len(top) == 3 and int(top[0][1]) >= int(top[-1][1]) > 0
        _, per_minute = _sql(conf_file, "SELECT SUM(events) FROM events_per_minute "
                                        "WHERE `type` = 'rating'")
        assert int(per_minute[0][0]) == len(events)
        pids = h.cluster.jobmanager_pids() + h.cluster.taskmanager_pids()
        assert pids
    # `cluster down` (the harness's exit) leaves no process behind.
    assert not [p for p in pids if _alive(p)]


def _sql(conf_file, query: str) -> tuple[str, list[tuple[str, ...]]]:
    """``streamrank sql --config conf_file query``: its output and the rows of its table."""
    proc = subprocess.run([sys.executable, "-m", "streamrank.cli", "sql", "--config",
                           str(conf_file), query], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    rows = [tuple(cell.strip() for cell in line.strip("|").split("|")) for line in table[1:]]
    return proc.stdout, rows
