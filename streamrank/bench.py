"""``streamrank bench``: the job against a plain consumer loop, on the same topics.

One invocation, phases run one after the other so they do not compete for the cores:

1. **throughput**: the job (MiniCluster, ``--parallelism``) with the catalog loaded and cached;
   ``--events`` events produced at once; events/s = events / (last ranking received - first
   event sent);
2. **latency**: ``--latency-events`` more events at a fixed ``--rate``; produce -> ranking
   received percentiles;
3. **plain loop**: one Python process, kafka-python + numpy, reading the same ``items`` and
   ``events`` topics and doing the same ranking math (the same ``recommender`` functions,
   with the item statistics and co-occurrence computed inline as the job's item branch does),
   writing rankings to its own topic; events/s over all the events;
4. **embedding**: texts/s of the configured model at fp32 and at int8, and their mean cosine.

Writes ``bench.json`` and ``bench.png`` under ``--out``; the last line printed is one JSON
object with ``events_per_s``, ``loop_events_per_s``, ``ratio_vs_loop``, ``p50_ms``,
``p95_ms``, ``p99_ms``, ``catalog``, ``parallelism`` and more.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

import numpy as np

from streamrank.config import Settings

log = logging.getLogger("streamrank.bench")


def _say(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"\033[1m[bench]\033[0m {msg}")


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    a = np.asarray(values, dtype=float)
    return {f"p{q}_ms": round(float(np.percentile(a, q)), 1) for q in (50, 95, 99)}


def plain_loop(settings: Settings, n_events: int, out_topic: str,
               timeout_s: float = 3600) -> dict:
    """The hand-written alternative: consume, rank with the same model code, produce."""
    from kafka import KafkaConsumer, KafkaProducer

    from operators import recommender
    from operators.catalog import CatalogIndex
    from operators.recommender import ModelParams
    from streamrank.evaluate import ItemStatistics
    from streamrank.inprocess import InProcessUsers
    from streamrank.messages import InvalidRecord, parse_event, parse_item, ranking_record
    from udfs.embedding import CachedEmbedder

    bootstrap, topics = settings.kafka.bootstrap_servers, settings.kafka.topics
    p = ModelParams.from_settings(settings.ranking)
    cat = CatalogIndex()
    stats = ItemStatistics(cat, p, settings.ranking.max_neighbours)
    embedder = CachedEmbedder.from_settings(settings.model)
    consumer = KafkaConsumer(topics.items, bootstrap_servers=bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             group_id=None, consumer_timeout_ms=3000, max_poll_records=2000)
    for msg in consumer:  # the catalog, until the topic is drained
        try:
            it = parse_item(msg.value, now_ms=int(time.time() * 1000))
        except InvalidRecord:
            continue
        if it.deleted:
            cat.delete(it.item_id)
        else:
            cat.upsert(it.item_id, it.title, embedder.embed([it.text()])[0])
    consumer.close()
    embedder.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=2, acks=1,
                             batch_size=64 * 1024)
    consumer = KafkaConsumer(topics.events, bootstrap_servers=bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             group_id=None, max_poll_records=2000)
    users = InProcessUsers(cat, p, embedder.model_id)
    done = 0
    t0 = None
    deadline = time.monotonic() + timeout_s
    while done < n_events and time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=500)
        for msgs in batch.values():
            for msg in msgs:
                if t0 is None:
                    t0 = time.perf_counter()
                try:
                    ev = parse_event(msg.value, now_ms=int(time.time() * 1000))
                except InvalidRecord:
                    continue
                step = users.handle(ev)
                if step.state is None:
                    continue
                st = step.state
                if step.applied:
                    ranked = recommender.rank(st, cat, p, ev.ts)
                    st.shown = [cat.ids[r] for r in ranked.rows]
                    items = [{"item_id": cat.ids[r], "score": round(s, 5), "reason": why}
                             for r, s, why in zip(ranked.rows, ranked.scores, ranked.reasons)]
                    producer.send(out_topic, key=ev.user_id.encode(), value=ranking_record(
                        user_id=ev.user_id, items=items, k=p.k, model=embedder.model_id,
                        event_id=ev.event_id, event_ts=ev.ts,
                        emitted_ts=int(time.time() * 1000), catalog_size=len(cat)))
                stats.apply(list(step.prev_history), ev.item_id, ev.type, step.weight, ev.ts)
                if not ev.user_id.startswith("__"):
                    done += 1
    producer.flush()
    seconds = time.perf_counter() - (t0 or time.perf_counter())
    consumer.close()
    producer.close()
    return {"events": done, "seconds": round(seconds, 2),
            "events_per_s": round(done / seconds, 1) if seconds else None}


def embedding_speed(settings: Settings, texts: list[str]) -> dict:
    """texts/s at fp32 and int8 (CPU) on the same texts, and their agreement."""
    from udfs.embedding import TextEmbedder

    out, vecs = {}, {}
    for precision in ("fp32", "int8"):
        emb = TextEmbedder(settings.model.name_or_path, device="cpu",
                           batch_size=settings.model.batch_size,
                           max_length=settings.model.max_length, precision=precision)
        emb.embed(texts[:settings.model.batch_size])  # warm up
        t0 = time.perf_counter()
        vecs[precision] = emb.embed(texts)
        out[f"{precision}_texts_per_s"] = round(len(texts) / (time.perf_counter() - t0), 1)
    cos = (vecs["fp32"] * vecs["int8"]).sum(axis=1)
    out["int8_speedup"] = round(out["int8_texts_per_s"] / out["fp32_texts_per_s"], 2)
    out["int8_mean_cosine"] = round(float(cos.mean()), 4)
    out["int8_min_cosine"] = round(float(cos.min()), 4)
    out["texts"] = len(texts)
    return out


def run_bench(settings: Settings, data_dir: str, events: int = 10_000,
              latency_events: int = 3000, rate: float = 2000.0, parallelism: int = 1,
              embed_texts: int = 512, out_dir: str = ".run/bench",
              skip_embedding: bool = False) -> dict:
    from streamrank.kafka_local import LocalBroker, create_topics
    from streamrank.messages import parse_item
    from streamrank.replay import make_producer, produce, read_events, read_items
    from streamrank.runtime import prepare_process_environment
    from streamrank.watch import JobProcess, RankingsReader, wait_for_catalog
    from udfs.warmup import warm_cache

    prepare_process_environment()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    over = {"kafka.group_id": f"streamrank-bench-{tag}", "flink.parallelism": parallelism,
            "kafka.partitions": max(parallelism, settings.kafka.partitions),
            "flink.checkpoint_dir": str((out / "checkpoints" / tag).resolve())}
    for role in ("items", "events", "rankings", "events_dlq", "items_dlq"):
        over[f"kafka.topics.{role}"] = f"bench-{tag}-{role.replace('_', '-')}"
    settings = settings.replace(**over)
    items = read_items(data_dir)
    all_events = read_events(data_dir, limit=events + latency_events, id_prefix=f"b{tag}")
    burst, paced = all_events[:events], all_events[events:]
    result: dict = {"catalog": len(items), "parallelism": parallelism, "events": len(burst),
                    "latency_events": len(paced), "latency_rate": rate,
                    "cores": _cores(), "delivery": settings.kafka.delivery_guarantee}
    _say(f"{len(items)} items, {len(burst)} + {len(paced)} events, parallelism {parallelism}")

    broker = LocalBroker(settings.local_kafka)
    started = broker.pid() is None
    broker.up()
    job = rankings = producer = None
    try:
        loop_topic = f"bench-{tag}-loop-rankings"
        create_topics(settings.kafka, extra=(loop_topic,))
        warm_cache(items, settings.model)
        job = JobProcess(settings, out / "job.log").start()
        rankings = RankingsReader(settings.kafka.bootstrap_servers, settings.kafka.topics.rankings)
        producer = make_producer(settings.kafka.bootstrap_servers)
        produce(producer, settings.kafka.topics.items, items, "item_id", desc="items")
        wait_for_catalog(producer, settings, rankings, items[-1]["item_id"], len(items),
                         job=job, timeout_s=900)

        # 1. throughput at saturation
        _say("phase 1: throughput (all events at once)")
        t_send = time.time() * 1000
        produce(producer, settings.kafka.topics.events, burst, "user_id", desc="events")
        ids = [e["event_id"] for e in burst]
        _wait_all(rankings, ids, job)
        last = max(rankings.by_event[i][0] for i in ids)
        result["events_per_s"] = round(len(ids) / ((last - t_send) / 1000), 1)
        _say(f"job: {result['events_per_s']} events/s")

        # 2. latency at a fixed rate
        _say(f"phase 2: latency at {rate:g} events/s")
        sent_at: dict[str, int] = {}
        produce(producer, settings.kafka.topics.events, paced, "user_id", rate=rate,
                desc="events (paced)", on_sent=lambda rec, ms: sent_at.__setitem__(
                    rec["event_id"], ms))
        _wait_all(rankings, [e["event_id"] for e in paced], job)
        lat = [rankings.by_event[e][0] - sent_at[e] for e in sent_at]
        result.update(_percentiles(lat))
        achieved = len(paced) / max(1e-9, (max(sent_at.values()) - min(sent_at.values())) / 1000)
        result["latency_rate_achieved"] = round(achieved, 1)
        _say(f"job latency: p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, "
             f"p99 {result['p99_ms']} ms")
    finally:
        for c in (producer, rankings):
            if c is not None:
                c.close()
        if job is not None:
            job.stop()

    # 3. the plain loop, on the same topics, with the cores to itself
    try:
        _say("phase 3: plain kafka-python + numpy loop, same topics, same ranking math")
        loop = plain_loop(settings, len(all_events), loop_topic)
        result["loop_events_per_s"] = loop["events_per_s"]
        result["ratio_vs_loop"] = round(result["events_per_s"] / loop["events_per_s"], 3) \
            if loop["events_per_s"] else None
        _say(f"loop: {loop['events_per_s']} events/s")
    finally:
        if started:
            broker.down()

    # 4. embedding
    if not skip_embedding:
        _say("phase 4: embedding texts/s, fp32 vs int8")
        now = int(time.time() * 1000)
        texts = [parse_item(json.dumps(it).encode(), now_ms=now).text()
                 for it in items[:embed_texts]]
        result["embedding"] = embedding_speed(settings, texts)
        _say(json.dumps(result["embedding"]))
    result["ann"] = "not implemented (exact scoring over the whole catalog)"
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    result["plot"] = str(_plot(result, out / "bench.png"))
    return result


def _wait_all(rankings, ids: list[str], job, timeout_s: float = 3600) -> None:
    from tqdm import tqdm

    with tqdm(total=len(ids), desc="rankings", unit="ev", mininterval=0.5) as bar:
        n = rankings.wait_ranked(ids, timeout_s, job=job,
                                 on_tick=lambda n: bar.update(n - bar.n))
    if n < len(ids):
        raise TimeoutError(f"only {n} of {len(ids)} rankings after {timeout_s:.0f}s")


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    ax = axes[0]
    ax.bar(["streamrank job", "plain loop"],
           [result.get("events_per_s") or 0, result.get("loop_events_per_s") or 0],
           color=["#3b7dd8", "#999999"])
    ax.set_ylabel("events/s")
    ax.set_title(f"throughput, catalog {result['catalog']}, p={result['parallelism']}")
    ax = axes[1]
    qs = ["p50_ms", "p95_ms", "p99_ms"]
    ax.bar([q[:3] for q in qs], [result.get(q) or 0 for q in qs], color="#3b7dd8")
    ax.set_ylabel("ms")
    ax.set_title(f"latency at {result['latency_rate']:g} ev/s "
                 f"(achieved {result.get('latency_rate_achieved', 0):g})")
    ax = axes[2]
    emb = result.get("embedding") or {}
    ax.bar(["fp32", "int8"], [emb.get("fp32_texts_per_s", 0), emb.get("int8_texts_per_s", 0)],
           color=["#999999", "#3b7dd8"])
    ax.set_ylabel("texts/s")
    ax.set_title(f"embedding (int8 cosine {emb.get('int8_mean_cosine', '-')})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
