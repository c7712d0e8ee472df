"""``streamrank bench``: the job against a plain consumer loop, on the same topics.

One invocation, phases run one after the other so they do not compete for the cores:

1. **throughput**: the job (MiniCluster, ``--parallelism``; or, with ``--taskmanagers N``, a
   standalone cluster of N one-slot TaskManagers at parallelism N: each TaskManager has its
   own Python interpreter, which is how the job scales out) with the catalog loaded and cached;
   ``--events`` events produced at once; events/s = events / (last ranking received - first
   event sent);
2. **latency**: ``--latency-events`` more events at a fixed ``--rate``; produce -> ranking
   received percentiles;
3. **plain loop**: one Python process, kafka-python + numpy, reading the same ``items`` and
   ``events`` topics and doing the same ranking math (the same ``recommender`` functions,
   with the item statistics and co-occurrence computed inline as the job's item branch does),
   writing rankings to its own topic; events/s over all the events;
4. **embedding**: texts/s of the configured model at fp32, bf16 and int8 (CPU), with the fast
   paths' mean cosine to fp32.

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
from typing import Optional

import numpy as np

from contracts.config import Settings

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

    from recsys import recommender
    from recsys.catalog import CatalogIndex
    from recsys.recommender import ModelParams
    from streamrank.evaluate import ItemStatistics
    from streamrank.inprocess import InProcessUsers
    from contracts.kafka_clients import python_client_kwargs
    from contracts.messages import InvalidRecord, parse_event, parse_item, ranking_record
    from udfs.embedding import CachedEmbedder

    bootstrap, topics = settings.kafka.bootstrap_servers, settings.kafka.topics
    p = ModelParams.from_settings(settings.ranking)
    cat = CatalogIndex()
    stats = ItemStatistics(cat, p, settings.ranking.max_neighbours)
    embedder = CachedEmbedder.from_settings(settings.model)
    client = python_client_kwargs(settings.kafka.properties, "consumer")
    consumer = KafkaConsumer(topics.items, bootstrap_servers=bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             group_id=None, consumer_timeout_ms=3000, max_poll_records=2000,
                             **client)
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
                             batch_size=64 * 1024,
                             **python_client_kwargs(settings.kafka.properties, "producer"))
    consumer = KafkaConsumer(topics.events, bootstrap_servers=bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             group_id=None, max_poll_records=2000, **client)
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
    """texts/s of the model at fp32 and at the CPU fast paths (bf16, int8) on the same texts,
    and each fast path's cosine agreement with fp32. ``fast_*`` names the faster of the two."""
    from udfs.embedding import TextEmbedder

    out, vecs = {}, {}
    for precision in ("fp32", "bf16", "int8"):
        emb = TextEmbedder(settings.model.name_or_path, device="cpu",
                           batch_size=settings.model.batch_size,
                           max_length=settings.model.max_length, precision=precision)
        emb.embed(texts[:settings.model.batch_size])  # warm up
        t0 = time.perf_counter()
        vecs[precision] = emb.embed(texts)
        out[f"{precision}_texts_per_s"] = round(len(texts) / (time.perf_counter() - t0), 1)
    for precision in ("bf16", "int8"):
        cos = (vecs["fp32"] * vecs[precision]).sum(axis=1)
        out[f"{precision}_speedup"] = round(out[f"{precision}_texts_per_s"]
                                            / out["fp32_texts_per_s"], 2)
        out[f"{precision}_mean_cosine"] = round(float(cos.mean()), 5)
        out[f"{precision}_min_cosine"] = round(float(cos.min()), 5)
    # The fast path: the fastest that keeps a mean cosine of 0.99 to fp32 (else the fastest),
    # if it is faster than fp32 at all on this CPU (bf16 needs AVX512-BF16 or AMX).
    faithful = [p for p in ("bf16", "int8") if out[f"{p}_mean_cosine"] >= 0.99]
    fast = max(faithful or ["bf16", "int8"], key=lambda p: out[f"{p}_texts_per_s"])
    if out[f"{fast}_speedup"] > 1.0:
        out.update(fast_precision=fast, fast_speedup=out[f"{fast}_speedup"],
                   fast_mean_cosine=out[f"{fast}_mean_cosine"])
    else:
        out.update(fast_precision="fp32", fast_speedup=1.0, fast_mean_cosine=1.0)
    out.update(texts=len(texts), cpu_native_bf16=_cpu_bf16())
    return out


def _cpu_bf16() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - an older torch without the probe
        return False


def catalog_scale(settings: Settings, items: list[dict], events: list[dict],
                  scale_items: int = 100_000, n_events: int = 2000, recall_sample: int = 200,
                  seed: int = 0) -> dict:
    """The ranker in one process (the code the job runs, no Kafka or Flink) on the MovieLens
    catalog, scored exactly, and on a MovieLens-derived catalog of ``scale_items`` rows
    (each extra row: a real item's embedding plus noise, cosine ~0.9 to it), scored through
    candidate retrieval. Rankings/s over the same ``n_events`` events, and the recall@10 of
    the candidate stage against exact scoring of the large catalog: the share of the exact
    top-10 that the candidates contain; ``ann_recall_at_10``: the share of the exact
    content top-10 (per centroid) that the ANN index returns."""
    from recsys import recommender
    from recsys.catalog import CatalogIndex
    from recsys.recommender import ModelParams
    from recsys.user_state import UserState
    from streamrank.evaluate import ItemStatistics, embed_items
    from streamrank.inprocess import InProcessUsers
    from contracts.messages import parse_event

    p = ModelParams.from_settings(settings.ranking)
    parsed, vecs = embed_items(settings, items)
    now = int(time.time() * 1000)
    evs = [parse_event(json.dumps(e).encode(), now_ms=now) for e in events[:n_events]]
    rng = np.random.default_rng(seed)

    def build(n: int) -> CatalogIndex:
        cat = CatalogIndex(vecs.shape[1], capacity=max(n, 1024))
        for it, v in zip(parsed, vecs):
            cat.upsert(it.item_id, it.title, v)
        extra = n - len(parsed)
        if extra > 0:
            base = rng.integers(0, len(parsed), extra)
            noise = rng.standard_normal((extra, vecs.shape[1])).astype(np.float32)
            derived = vecs[base] + noise * np.float32(0.48 / np.sqrt(vecs.shape[1]))
            for j in range(extra):
                cat.upsert(f"derived-{j}", f"{parsed[base[j]].title} #{j}", derived[j])
        return cat

    def replay(cat: CatalogIndex, check_recall: bool, keep: Optional[list] = None) -> dict:
        stats = ItemStatistics(cat, p, settings.ranking.max_neighbours)
        users = InProcessUsers(cat, p)
        spent, ranked, hits, total, ann_hits, ann_total = 0.0, 0, 0, 0, 0, 0
        every = max(1, len(evs) // recall_sample)
        for i, ev in enumerate(evs):
            step = users.handle(ev)
            if step.state is not None and step.applied:
                st = step.state
                if keep is not None:  # each ranking's input, for the batched measurement
                    keep.append((UserState.from_bytes(st.to_bytes()), ev.ts))
                t0 = time.perf_counter()
                out = recommender.rank(st, cat, p, ev.ts)
                spent += time.perf_counter() - t0
                ranked += 1
                st.shown = [cat.ids[r] for r in out.rows]
                if check_recall and i % every == 0 and st.has_interest:
                    exact = recommender.rank(st, cat, p, ev.ts, explain=False, exact=True)
                    cand = set(recommender.candidate_rows(
                        st, cat, p, recommender.cooc_scores(st, cat, p)).tolist())
                    hits += len(set(exact.rows) & cand)
                    total += len(exact.rows)
                    found = set(cat.ann_rows(st.centroids, p.ann_candidates,
                                             p.ann_nprobe).tolist())
                    content = cat.live_matrix() @ st.centroids.T
                    for c in range(content.shape[1]):
                        top = np.argpartition(-content[:, c], 9)[:10]
                        ann_hits += len(set(top.tolist()) & found)
                        ann_total += 10
            stats.apply(list(step.prev_history), ev.item_id, ev.type, step.weight, ev.ts)
        res = {"catalog": cat.size, "rankings": ranked,
               "rankings_per_s": round(ranked / spent, 1) if spent else None,
               "ms_per_ranking": round(1000 * spent / max(ranked, 1), 3),
               "exact": cat.size <= p.exact_max_items}
        if check_recall:
            res["candidate_recall_at_10"] = round(hits / total, 4) if total else None
            res["ann_recall_at_10"] = round(ann_hits / ann_total, 4) if ann_total else None
            res["recall_checks"] = total // max(p.k, 1)
        return res

    requests: list = []
    small_cat = build(len(parsed))
    small = replay(small_cat, check_recall=False, keep=requests)
    _say(f"ranker, {small['catalog']} items, exact: {small['rankings_per_s']} rankings/s")
    # The same rankings (each user's state after each event, the final catalog statistics),
    # one at a time and micro-batched as the job does.
    batch = max(1, settings.ranking.batch_max_users)
    t0 = time.perf_counter()
    for st, ts in requests:
        recommender.rank(st, small_cat, p, ts)
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    for start in range(0, len(requests), batch):
        recommender.rank_batch(requests[start:start + batch], small_cat, p, chunk=batch)
    many = time.perf_counter() - t0
    small["one_by_one_rankings_per_s"] = round(len(requests) / one, 1) if one else None
    small["batched_rankings_per_s"] = round(len(requests) / many, 1) if many else None
    small["batch_users"] = batch
    _say(f"ranker, {small['catalog']} items, same {len(requests)} rankings: "
         f"{small['one_by_one_rankings_per_s']}/s one by one, "
         f"{small['batched_rankings_per_s']}/s in batches of {batch} users")
    t0 = time.perf_counter()
    big_cat = build(scale_items)
    big_cat.ann_rows(vecs[:1], 1, p.ann_nprobe)  # build the index before timing
    build_s = round(time.perf_counter() - t0, 1)
    big = replay(big_cat, check_recall=True)
    big["catalog_and_index_build_s"] = build_s
    _say(f"ranker, {big['catalog']} items, candidates + ANN: {big['rankings_per_s']} "
         f"rankings/s, candidate recall@10 {big['candidate_recall_at_10']}, "
         f"ANN recall@10 {big['ann_recall_at_10']}")
    return {"small": small, "large": big,
            "large_vs_small": round(big["rankings_per_s"] / small["rankings_per_s"], 3)
            if small["rankings_per_s"] and big["rankings_per_s"] else None}


class ClusterJob:
    """The job on a standalone cluster of one-slot TaskManagers, with the surface of
    :class:`streamrank.watch.JobProcess` that the benchmark uses (start, check, stop)."""

    def __init__(self, settings: Settings):
        from streamrank.cluster import StandaloneCluster

        self.settings = settings
        self.cluster = StandaloneCluster(settings)
        self.job_id = ""
        self._checked = 0.0

    def start(self) -> "ClusterJob":
        if self.cluster.jobmanager_pids():
            raise RuntimeError(f"a cluster of {self.cluster.root} is already running; "
                               "`streamrank cluster down` first")
        self.cluster.up()
        self.job_id = self.cluster.submit(self.settings)
        self.cluster.wait_job_running(self.job_id, wait_s=180)
        return self

    def check(self) -> None:
        if time.monotonic() - self._checked < 5:
            return
        self._checked = time.monotonic()
        state = self.cluster.job_state(self.job_id)
        if state in ("FAILED", "CANCELED", "FINISHED", "FAILING"):
            raise RuntimeError(f"job {self.job_id} is {state}; logs in {self.cluster.root}/log")

    def stop(self) -> None:
        try:
            if self.job_id:
                self.cluster.cancel(self.job_id)
        finally:
            self.cluster.down()


def run_bench(settings: Settings, data_dir: str, events: int = 10_000,
              latency_events: int = 3000, rate: float = 2000.0, parallelism: int = 1,
              embed_texts: int = 512, out_dir: str = ".run/bench",
              skip_embedding: bool = False, scale_items: int = 100_000,
              taskmanagers: int = 0) -> dict:
    from streamrank.kafka_local import LocalBroker, create_topics
    from contracts.messages import parse_item
    from streamrank.replay import make_producer, produce, read_events, read_items
    from jobs.runtime import prepare_process_environment
    from streamrank.watch import JobProcess, RankingsReader, wait_for_catalog
    from udfs.warmup import warm_cache

    prepare_process_environment()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    if taskmanagers:
        parallelism = taskmanagers
    over = {"kafka.group_id": f"streamrank-bench-{tag}", "flink.parallelism": parallelism,
            "kafka.partitions": max(parallelism, settings.kafka.partitions),
            "flink.checkpoint_dir": str((out / "checkpoints" / tag).resolve())}
    for role in ("items", "events", "rankings", "events_dlq", "items_dlq"):
        over[f"kafka.topics.{role}"] = f"bench-{tag}-{role.replace('_', '-')}"
    if taskmanagers:
        over.update({"cluster.taskmanagers": taskmanagers, "cluster.slots_per_taskmanager": 1,
                     "cluster.dir": str((out / "cluster").resolve())})
    settings = settings.replace(**over)
    items = read_items(data_dir)
    all_events = read_events(data_dir, limit=events + 2 * latency_events,
                             id_prefix=f"b{tag}")
    burst = all_events[:events]
    paced = all_events[events:events + latency_events]
    sustained = all_events[events + latency_events:]
    result: dict = {"catalog": len(items), "parallelism": parallelism,
                    "runtime": (f"standalone cluster, {taskmanagers} TaskManager(s) x 1 slot"
                                if taskmanagers else "MiniCluster"), "events": len(burst),
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
        job = (ClusterJob(settings) if taskmanagers
               else JobProcess(settings, out / "job.log")).start()
        props = settings.kafka.properties
        rankings = RankingsReader(settings.kafka.bootstrap_servers, settings.kafka.topics.rankings,
                                  props)
        producer = make_producer(settings.kafka.bootstrap_servers, props)
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

        # 2. latency at a fixed rate; 2b. at half the measured throughput (a load it sustains)
        def paced_latency(batch: list[dict], at: float, label: str) -> tuple[dict, float]:
            _say(f"phase {label}: latency at {at:g} events/s")
            sent_at: dict[str, int] = {}
            produce(producer, settings.kafka.topics.events, batch, "user_id", rate=at,
                    desc="events (paced)", on_sent=lambda rec, ms: sent_at.__setitem__(
                        rec["event_id"], ms))
            _wait_all(rankings, [e["event_id"] for e in batch], job)
            lat = [rankings.by_event[e][0] - sent_at[e] for e in sent_at]
            span = (max(sent_at.values()) - min(sent_at.values())) / 1000
            pct = _percentiles(lat)
            _say(f"job latency at {at:g}/s: p50 {pct['p50_ms']} ms, p95 {pct['p95_ms']} ms, "
                 f"p99 {pct['p99_ms']} ms")
            return pct, round(len(batch) / max(span, 1e-9), 1)

        pct, achieved = paced_latency(paced, rate, "2")
        result.update(pct, latency_rate_achieved=achieved)
        if sustained:
            half = max(1.0, round(result["events_per_s"] / 2))
            sustained = sustained[:max(int(half * 20), 100)]  # ~20 s of it
            pct, achieved = paced_latency(sustained, half, "2b")
            result["half_load"] = {"rate": half, "rate_achieved": achieved, **pct}
    finally:
        for c in (producer, rankings):
            if c is not None:
                c.close()
        if job is not None:
            job.stop()

    # 3. the plain loop, on the same topics, with the cores to itself
    try:
        _say("phase 3: plain kafka-python + numpy loop, same topics, same ranking math")
        loop = plain_loop(settings, len(burst) + len(paced) + len(sustained), loop_topic)
        result["loop_events_per_s"] = loop["events_per_s"]
        result["ratio_vs_loop"] = round(result["events_per_s"] / loop["events_per_s"], 3) \
            if loop["events_per_s"] else None
        _say(f"loop: {loop['events_per_s']} events/s")
    finally:
        if started:
            broker.down()

    # 4. embedding
    if not skip_embedding:
        _say("phase 4: embedding texts/s, fp32 vs bf16 vs int8")
        now = int(time.time() * 1000)
        texts = [parse_item(json.dumps(it).encode(), now_ms=now).text()
                 for it in items[:embed_texts]]
        result["embedding"] = embedding_speed(settings, texts)
        _say(json.dumps(result["embedding"]))
    if scale_items:
        _say(f"phase 5: the ranker alone, {len(items)} items exact vs {scale_items} "
             "via candidates + ANN")
        result["scale"] = catalog_scale(settings, items, all_events, scale_items=scale_items)
        large = result["scale"]["large"]
        result.update(ann_catalog=large["catalog"],
                      ann_candidate_recall_at_10=large["candidate_recall_at_10"],
                      ann_recall_at_10=large["ann_recall_at_10"],
                      ann_vs_exact_rankings_per_s=result["scale"]["large_vs_small"])
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
    ax.set_title(f"throughput, catalog {result['catalog']}, p={result['parallelism']}"
                 + (f", {result['parallelism']} TMs" if "cluster" in result["runtime"] else ""),
                 fontsize=9)
    ax = axes[1]
    qs = ["p50_ms", "p95_ms", "p99_ms"]
    ax.bar([q[:3] for q in qs], [result.get(q) or 0 for q in qs], color="#3b7dd8")
    ax.set_ylabel("ms")
    ax.set_title(f"latency at {result['latency_rate']:g} ev/s "
                 f"(achieved {result.get('latency_rate_achieved', 0):g})")
    ax = axes[2]
    emb = result.get("embedding") or {}
    names = ["fp32", "bf16", "int8"]
    ax.bar(names, [emb.get(f"{n}_texts_per_s", 0) for n in names],
           color=["#999999", "#3b7dd8", "#7fb0ea"])
    ax.set_ylabel("texts/s")
    ax.set_title(f"embedding (cosine to fp32: bf16 {emb.get('bf16_mean_cosine', '-')}, "
                 f"int8 {emb.get('int8_mean_cosine', '-')})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
