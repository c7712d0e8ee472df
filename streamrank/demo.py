"""``streamrank demo``: the whole product end to end on this machine.

Starts the local Kafka broker, creates fresh topics, embeds the catalog (cached), starts the
job in a local Flink MiniCluster, replays a MovieLens-layout dataset (items, then events in
time order), shows live rankings with titles, then stops everything and prints one line:
``demo: events=N rankings=M dlq=D p50_ms=x p99_ms=y``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

from contracts.config import Settings
from streamrank.progress import say
from streamrank.kafka_local import LocalBroker, create_topics
from streamrank.replay import make_producer, produce, read_events, read_items
from streamrank.watch import JobProcess, RankingsReader, TopicReader, wait_for_catalog

log = logging.getLogger(__name__)

RUN_DIR = Path(".run/demo")


def _say(msg: str) -> None:
    say("demo", msg)


def format_ranking(rec: dict, titles: dict[str, str], n: int = 5) -> str:
    lines = [f"  user {rec['user_id']} after event {rec.get('event_id')} "
             f"(catalog {rec.get('catalog_size')} items):"]
    for i, it in enumerate(rec["items"][:n], 1):
        title = titles.get(it["item_id"], it["item_id"])
        lines.append(f"    {i:2d}. {title:<55.55s} {it['score']:.3f}  {it.get('reason', '')}")
    return "\n".join(lines)


def _live_printer(rankings, titles: dict) -> threading.Event:
    """Print a fresh user's ranking every 4 s until the returned event is set."""
    stop = threading.Event()

    def show_live() -> None:
        shown = set()
        while not stop.wait(4.0):
            recs = [r for r in rankings.latest_rankings()
                    if r["user_id"] not in shown and len(r["items"]) >= 3]
            if recs:
                rec = max(recs, key=lambda r: r["emitted_ts"])
                shown.add(rec["user_id"])
                _say("live ranking\n" + format_ranking(rec, titles))

    threading.Thread(target=show_live, daemon=True).start()
    return stop


def _wait_for_rankings(rankings, job, prefix: str, n: int, idle_s: float = 60) -> None:
    """Wait while the job makes progress; give up only after ``idle_s`` without any."""
    seen, last_progress = -1, time.monotonic()
    while rankings.seen_events(prefix) < n and time.monotonic() - last_progress < idle_s:
        job.check()
        now_seen = rankings.seen_events(prefix)
        if now_seen != seen:
            seen, last_progress = now_seen, time.monotonic()
        time.sleep(0.2)


def _replay(settings: Settings, job, rankings, producer, items: list, events: list,
            rate: Optional[float], prefix: str) -> dict:
    """Load the catalog, replay the events, and measure: events, rankings, latency from an
    event's production to the first ranking that covers it."""
    titles = {it["item_id"]: it["title"] for it in items}
    produce(producer, settings.kafka.topics.items, items, "item_id", desc="items")
    t0 = time.monotonic()
    size = wait_for_catalog(producer, settings, rankings, items[-1]["item_id"], len(items),
                            job=job)
    _say(f"job ready: catalog of {size} items in the ranker after "
         f"{time.monotonic() - t0:.1f}s")
    produced: dict[str, int] = {}
    stop_showing = _live_printer(rankings, titles)
    t_replay = time.monotonic()
    n = produce(producer, settings.kafka.topics.events, events, "user_id", rate=rate,
                desc="events", on_sent=lambda rec, ms: produced.__setitem__(rec["event_id"], ms))
    replay_s = time.monotonic() - t_replay
    _wait_for_rankings(rankings, job, prefix, n)
    done_s = time.monotonic() - t_replay
    time.sleep(1.0)  # let stragglers (duplicates, DLQ) arrive before counting
    stop_showing.set()
    latencies = [received[0] - produced[e]
                 for e, received in rankings.receive_times(prefix).items()]
    lat = np.array(latencies, dtype=np.float64)
    n_rankings = rankings.rankings_covering(prefix)
    sample_users = list(dict.fromkeys(e["user_id"] for e in reversed(events)))[:3]
    finals = [rankings.ranking(u) for u in sample_users]
    _say("final rankings of the last active users\n" + "\n".join(
        format_ranking(rec, titles) for rec in finals if rec is not None))
    return {"events": n, "events_ranked": len(latencies), "rankings": n_rankings,
            "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
            "replay_s": round(replay_s, 1),
            "rankings_per_s": round(n_rankings / done_s, 1) if done_s else None}


def run_demo(settings: Settings, data_dir: str, limit: Optional[int] = None,
             rate: Optional[float] = None, keep_kafka: bool = False) -> dict:
    from jobs.runtime import prepare_process_environment
    from udfs.warmup import warm_cache

    prepare_process_environment()
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    settings = settings.replace(**{
        "kafka.group_id": f"streamrank-demo-{stamp}",
        "flink.checkpoint_dir": str(RUN_DIR / "checkpoints" / stamp),
    })
    items = read_items(data_dir)
    events = read_events(data_dir, limit=limit, id_prefix=f"demo{stamp}")
    _say(f"dataset {data_dir}: {len(items)} items, {len(events)} events")

    broker = LocalBroker(settings.local_kafka)
    started_broker = broker.pid() is None
    _say(f"starting local Kafka on {broker.bootstrap}" if started_broker
         else f"using the running local Kafka on {broker.bootstrap}")
    broker.up()
    job = rankings = dlq = producer = None
    try:
        create_topics(settings.kafka, recreate=True)
        stats = warm_cache(items, settings.model)
        _say(f"embedding cache: {stats['cached']} cached, {stats['embedded']} embedded now"
             + (f" ({stats['texts_per_s']} texts/s)" if stats["embedded"] else ""))
        _say(f"starting the Flink job (MiniCluster), log in {RUN_DIR / 'job.log'}")
        job = JobProcess(settings, RUN_DIR / "job.log").start()
        bootstrap, props = settings.kafka.bootstrap_servers, settings.kafka.properties
        rankings = RankingsReader(bootstrap, settings.kafka.topics.rankings, props)
        dlq = TopicReader(bootstrap, settings.kafka.topics.events_dlq, props)
        producer = make_producer(bootstrap, props)
        result = _replay(settings, job, rankings, producer, items, events, rate,
                         f"demo{stamp}-")
        result["dlq"] = dlq.count()
        _say(json.dumps(result))
        return result
    finally:
        for closer in (rankings, dlq, producer):
            if closer is not None:
                closer.close()
        if job is not None:
            _say("stopping the job")
            job.stop()
        if started_broker and not keep_kafka:
            _say("stopping local Kafka")
            broker.down()
