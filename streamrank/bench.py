"""``streamrank bench``: the job against a plain consumer loop, on the same topics.

One invocation, phases run one after the other so they do not compete for the cores:

1. **throughput**: the job (MiniCluster, ``--parallelism``; or, with ``--taskmanagers N``, a
   standalone cluster of N one-slot TaskManagers at parallelism N: each TaskManager has its
   own Python interpreter, which is how the job scales out) with the catalog loaded and cached;
   ``--events`` events produced at once, (a) in time order (people rate in bursts: most
   consecutive events are the same user's) and (b) ``--events`` more, interleaved so that
   consecutive events come from different users (each window ranks many users); events/s =
   events / (last ranking received - first event sent), and the rankings it took;
2. **latency**: ``--latency-events`` more events at a fixed ``--rate``, then ~20 s at half the
   measured throughput; from each event's production to the first ranking that covers it,
   percentiles;
3. **plain loop**: one Python process, kafka-python + numpy, reading the same ``items`` and
   ``events`` topics and running the same per-event step with the same per-window
   coalescing (``recsys.user_step.LocalUsers``), the item statistics inline, writing
   rankings to its own topic; events/s over all the events;
4. **embedding**: texts/s of the configured model at fp32, bf16 and int8 (CPU), with the fast
   paths' mean cosine to fp32;
5. **scale**: the ranker alone on the catalog, exact, and on a derived catalog of
   ``--scale-items`` rows through candidates + ANN.

Writes ``bench.json`` and ``bench.png`` under ``--out``; the last line printed is one JSON
object with ``events_per_s``, ``interleaved_events_per_s``, ``loop_events_per_s``,
``ratio_vs_loop``, ``p50_ms``,
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


def _loop_catalog(settings: Settings) -> tuple:
    """The plain loop's catalog, read from the ``items`` topic until it is drained, embedded
    through the same cache as the job."""
    from kafka import KafkaConsumer

    from contracts.kafka_clients import python_client_kwargs
    from contracts.messages import InvalidRecord, parse_item
    from recsys.catalog import CatalogIndex
    from udfs.embedding import CachedEmbedder

    cat = CatalogIndex()
    embedder = CachedEmbedder.from_settings(settings.model)
    consumer = KafkaConsumer(settings.kafka.topics.items,
                             bootstrap_servers=settings.kafka.bootstrap_servers,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             group_id=None, consumer_timeout_ms=3000, max_poll_records=2000,
                             **python_client_kwargs(settings.kafka.properties, "consumer"))
    try:
        for msg in consumer:
            try:
                it = parse_item(msg.value, now_ms=int(time.time() * 1000))
            except InvalidRecord:
                continue
            if it.deleted:
                cat.delete(it.item_id)
            else:
                cat.upsert(it.item_id, it.title, embedder.embed([it.text()])[0])
    finally:
        consumer.close()
        embedder.close()
    return cat, embedder.model_id


def plain_loop(settings: Settings, n_events: int, out_topic: str,
               timeout_s: float = 3600) -> dict:
    """The hand-written alternative: consume, step and rank with the same model code and the
    same per-window coalescing (:class:`LocalUsers`), the item statistics inline, produce."""
    from kafka import KafkaConsumer, KafkaProducer

    from contracts.kafka_clients import python_client_kwargs
    from contracts.messages import InvalidRecord, parse_event, ranking_record
    from recsys.item_stats import InlineItemStats
    from recsys.recommender import ModelParams
    from recsys.user_state import UserState
    from recsys.user_step import Emit, Incoming, LocalUsers, StepConfig

    kafka, p = settings.kafka, ModelParams.from_settings(settings.ranking)
    cat, model = _loop_catalog(settings)
    stats = InlineItemStats(cat, p, settings.ranking.max_neighbours)
    users = LocalUsers(cat, p, StepConfig.from_settings(settings.ranking), model,
                       batch_users=settings.ranking.batch_max_users)
    window = settings.ranking.emit_window_ms
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, linger_ms=2, acks=1,
                             batch_size=64 * 1024,
                             **python_client_kwargs(kafka.properties, "producer"))
    consumer = KafkaConsumer(kafka.topics.events, bootstrap_servers=kafka.bootstrap_servers,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             group_id=None, max_poll_records=2000,
                             **python_client_kwargs(kafka.properties, "consumer"))

    def emit(outs: list) -> None:
        for user, out, items in outs:
            if isinstance(out, Emit):
                producer.send(out_topic, key=user.encode(), value=ranking_record(
                    user_id=user, items=items, k=p.k, model=model, event_ids=out.due.event_ids,
                    event_ts=out.due.ts, emitted_ts=int(time.time() * 1000),
                    catalog_size=len(cat)))

    done, t0 = 0, None
    deadline = time.monotonic() + timeout_s
    while done < n_events and time.monotonic() < deadline:
        for msgs in consumer.poll(timeout_ms=window or 500).values():
            t0 = t0 or time.perf_counter()
            for msg in msgs:
                now = int(time.time() * 1000)
                try:
                    ev = parse_event(msg.value, now_ms=now)
                except InvalidRecord:
                    continue
                st = users.states.get(ev.user_id)
                prev_history = list(st.history) if isinstance(st, UserState) else []
                emit(users.event(Incoming.of(ev, msg.partition, msg.offset), now))
                stats.apply(prev_history, ev.item_id, ev.type, p.weight(ev.type, ev.value),
                            ev.ts)
                done += not ev.user_id.startswith("__")
        emit(users.tick(int(time.time() * 1000)))
    emit(users.flush())
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


def _derived_catalog(parsed: list, vecs: np.ndarray, n: int, rng):
    """The dataset's catalog grown to ``n`` rows: each extra row a real item's embedding plus
    noise (cosine ~0.9 to it)."""
    from streamrank.offline import catalog_of

    cat = catalog_of(parsed, vecs, capacity=n)
    extra = n - len(parsed)
    if extra > 0:
        base = rng.integers(0, len(parsed), extra)
        noise = rng.standard_normal((extra, vecs.shape[1])).astype(np.float32)
        derived = vecs[base] + noise * np.float32(0.48 / np.sqrt(vecs.shape[1]))
        for j in range(extra):
            cat.upsert(f"derived-{j}", f"{parsed[base[j]].title} #{j}", derived[j])
    return cat


def _candidate_recall(st, cat, p, ts: int) -> tuple[int, int, int, int]:
    """(hits, total) of the candidate stage against exact scoring, and (hits, total) of the
    ANN index against each centroid's exact content top-10, for one user."""
    from recsys import recommender

    exact = recommender.rank(st, cat, p, ts, explain=False, exact=True)
    cand = set(recommender.candidate_rows(st, cat, p,
                                          recommender.cooc_scores(st, cat, p)).tolist())
    found = set(cat.ann_rows(st.centroids, p.ann_candidates, p.ann_nprobe).tolist())
    content = cat.live_matrix() @ st.centroids.T
    ann_hits = sum(len(set(np.argpartition(-content[:, c], 9)[:10].tolist()) & found)
                   for c in range(content.shape[1]))
    return len(set(exact.rows) & cand), len(exact.rows), ann_hits, 10 * content.shape[1]


def _replay_ranker(settings: Settings, cat, evs: list, check_recall: bool,
                   recall_sample: int = 200, keep: Optional[list] = None) -> dict:
    """Replay ``evs`` through the per-event step (each event ranked on its own) and time the
    rankings; optionally the candidate stage's recall; ``keep`` collects each ranking's
    input (a copy of the state, and its clock)."""
    from recsys import recommender
    from recsys.item_stats import InlineItemStats
    from recsys.recommender import ModelParams
    from recsys.user_state import UserState
    from recsys.user_step import Emit, Incoming, LocalUsers, StepConfig, show

    p = ModelParams.from_settings(settings.ranking)
    stats = InlineItemStats(cat, p, settings.ranking.max_neighbours)
    users = LocalUsers(cat, p, StepConfig.from_settings(settings.ranking).per_event(),
                       rank=False)
    spent, ranked, recall = 0.0, 0, np.zeros(4, np.int64)
    every = max(1, len(evs) // recall_sample)
    for i, ev in enumerate(evs):
        st = users.states.get(ev.user_id)
        prev_history = list(st.history) if isinstance(st, UserState) else []
        for user, out, _ in users.event(Incoming.of(ev), 0):
            if not isinstance(out, Emit):
                continue
            st = users.states[user]
            if keep is not None:
                keep.append((UserState.from_bytes(st.to_bytes()), out.due.ts))
            t0 = time.perf_counter()
            show(st, recommender.rank(st, cat, p, out.due.ts), cat)
            spent += time.perf_counter() - t0
            ranked += 1
            if check_recall and i % every == 0 and st.has_interest:
                recall += _candidate_recall(st, cat, p, out.due.ts)
        stats.apply(prev_history, ev.item_id, ev.type, p.weight(ev.type, ev.value), ev.ts)
    res = {"catalog": cat.size, "rankings": ranked,
           "rankings_per_s": round(ranked / spent, 1) if spent else None,
           "ms_per_ranking": round(1000 * spent / max(ranked, 1), 3),
           "exact": cat.size <= p.exact_max_items}
    if check_recall:
        res["candidate_recall_at_10"] = round(recall[0] / recall[1], 4) if recall[1] else None
        res["ann_recall_at_10"] = round(recall[2] / recall[3], 4) if recall[3] else None
        res["recall_checks"] = int(recall[1]) // max(p.k, 1)
    return res


def _one_by_one_vs_batched(settings: Settings, cat, requests: list) -> dict:
    """The same rankings (each user's state after each event, the final catalog statistics)
    one at a time and in batches of ``ranking.batch_max_users``, as a window ranks them."""
    from recsys import recommender
    from recsys.recommender import ModelParams

    p, batch = ModelParams.from_settings(settings.ranking), max(1, settings.ranking.batch_max_users)
    t0 = time.perf_counter()
    for st, ts in requests:
        recommender.rank(st, cat, p, ts)
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    for start in range(0, len(requests), batch):
        recommender.rank_batch(requests[start:start + batch], cat, p, chunk=batch)
    many = time.perf_counter() - t0
    return {"one_by_one_rankings_per_s": round(len(requests) / one, 1) if one else None,
            "batched_rankings_per_s": round(len(requests) / many, 1) if many else None,
            "batch_users": batch}


def catalog_scale(settings: Settings, items: list[dict], events: list[dict],
                  scale_items: int = 100_000, n_events: int = 2000, seed: int = 0) -> dict:
    """The ranker in one process (the code the job runs, no Kafka or Flink) on the MovieLens
    catalog, scored exactly, and on a MovieLens-derived catalog of ``scale_items`` rows,
    scored through candidate retrieval. Rankings/s over the same ``n_events`` events, and the
    recall@10 of the candidate stage against exact scoring of the large catalog: the share of
    the exact top-10 that the candidates contain; ``ann_recall_at_10``: the share of the
    exact content top-10 (per centroid) that the ANN index returns."""
    from contracts.messages import parse_event
    from streamrank.offline import embed_items

    parsed, vecs, _ = embed_items(settings, items)
    now = int(time.time() * 1000)
    evs = [parse_event(json.dumps(e).encode(), now_ms=now) for e in events[:n_events]]
    rng = np.random.default_rng(seed)
    requests: list = []
    small_cat = _derived_catalog(parsed, vecs, len(parsed), rng)
    small = _replay_ranker(settings, small_cat, evs, check_recall=False, keep=requests)
    _say(f"ranker, {small['catalog']} items, exact: {small['rankings_per_s']} rankings/s")
    small.update(_one_by_one_vs_batched(settings, small_cat, requests))
    _say(f"ranker, {small['catalog']} items, same {len(requests)} rankings: "
         f"{small['one_by_one_rankings_per_s']}/s one by one, "
         f"{small['batched_rankings_per_s']}/s in batches of {small['batch_users']} users")
    t0 = time.perf_counter()
    big_cat = _derived_catalog(parsed, vecs, scale_items, rng)
    big_cat.ann_rows(vecs[:1], 1, settings.ranking.ann_nprobe)  # build the index before timing
    build_s = round(time.perf_counter() - t0, 1)
    big = _replay_ranker(settings, big_cat, evs, check_recall=True)
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


def interleaved(events: list[dict], prefix: str) -> list[dict]:
    """The same events reordered so that consecutive events come from different users (each
    user's own events still in time order): round robin over the users. Renamed with
    ``prefix`` so that they are told apart from the time-ordered copy."""
    by_user: dict[str, list[dict]] = {}
    for e in events:
        by_user.setdefault(e["user_id"], []).append(e)
    queues = list(by_user.values())
    out, i = [], 0
    while queues:
        q = queues[i % len(queues)]
        out.append({**q.pop(0), "event_id": f"{prefix}-{len(out)}"})
        if not q:
            queues.remove(q)
        else:
            i += 1
    return out


def _bench_settings(settings: Settings, out: Path, tag: str, parallelism: int,
                    taskmanagers: int) -> Settings:
    """The run's own consumer group, topics and checkpoints (and cluster)."""
    over = {"kafka.group_id": f"streamrank-bench-{tag}", "flink.parallelism": parallelism,
            "kafka.partitions": max(parallelism, settings.kafka.partitions),
            "flink.checkpoint_dir": str((out / "checkpoints" / tag).resolve())}
    for role in ("items", "events", "rankings", "events_dlq", "items_dlq"):
        over[f"kafka.topics.{role}"] = f"bench-{tag}-{role.replace('_', '-')}"
    if taskmanagers:
        over.update({"cluster.taskmanagers": taskmanagers, "cluster.slots_per_taskmanager": 1,
                     "cluster.dir": str((out / "cluster").resolve())})
    return settings.replace(**over)


class _JobPhases:
    """The phases that run against the job, on its topics, one after the other."""

    def __init__(self, settings: Settings, job, rankings, producer):
        self.settings, self.job, self.rankings, self.producer = settings, job, rankings, producer
        self.topic = settings.kafka.topics.events

    def throughput(self, events: list[dict], label: str, prefix: str) -> dict:
        """All ``events`` at once: events/s from the first sent to the last ranking received,
        and the rankings it took (coalescing covers a burst of one user with few)."""
        from streamrank.replay import produce

        _say(f"throughput, {label} (all events at once)")
        t_send = time.time() * 1000
        produce(self.producer, self.topic, events, "user_id", desc=f"events ({label})")
        ids = [e["event_id"] for e in events]
        _wait_all(self.rankings, ids, self.job)
        seconds = (max(self.rankings.by_event[i][0] for i in ids) - t_send) / 1000
        n_rankings = self.rankings.rankings_covering(prefix)
        res = {"events_per_s": round(len(ids) / seconds, 1), "rankings": n_rankings,
               "rankings_per_s": round(n_rankings / seconds, 1)}
        _say(f"job, {label}: {json.dumps(res)}")
        return res

    def latency(self, events: list[dict], rate: float, label: str) -> tuple[dict, float]:
        """``events`` at ``rate``: from each event's production to the first ranking that
        covers it, percentiles; and the rate achieved."""
        from streamrank.replay import produce

        _say(f"latency, {label}, at {rate:g} events/s")
        sent_at: dict[str, int] = {}
        produce(self.producer, self.topic, events, "user_id", rate=rate,
                desc="events (paced)",
                on_sent=lambda rec, ms: sent_at.__setitem__(rec["event_id"], ms))
        _wait_all(self.rankings, [e["event_id"] for e in events], self.job)
        lat = [self.rankings.by_event[e][0] - sent_at[e] for e in sent_at]
        span = (max(sent_at.values()) - min(sent_at.values())) / 1000
        pct = _percentiles(lat)
        _say(f"job latency at {rate:g}/s: p50 {pct['p50_ms']} ms, p95 {pct['p95_ms']} ms, "
             f"p99 {pct['p99_ms']} ms")
        return pct, round(len(events) / max(span, 1e-9), 1)


def _job_phases(settings: Settings, out: Path, taskmanagers: int, items: list[dict],
                streams: dict, rate: float) -> dict:
    """Start the job, load the catalog, run the throughput and latency phases."""
    from streamrank.replay import make_producer, produce
    from streamrank.watch import JobProcess, RankingsReader, wait_for_catalog
    from udfs.warmup import warm_cache

    result: dict = {}
    job = rankings = producer = None
    try:
        warm_cache(items, settings.model)
        job = (ClusterJob(settings) if taskmanagers
               else JobProcess(settings, out / "job.log")).start()
        props = settings.kafka.properties
        rankings = RankingsReader(settings.kafka.bootstrap_servers,
                                  settings.kafka.topics.rankings, props)
        producer = make_producer(settings.kafka.bootstrap_servers, props)
        produce(producer, settings.kafka.topics.items, items, "item_id", desc="items")
        wait_for_catalog(producer, settings, rankings, items[-1]["item_id"], len(items),
                         job=job, timeout_s=900)
        phases = _JobPhases(settings, job, rankings, producer)
        result.update(phases.throughput(streams["burst"], "time-ordered", streams["prefix"]))
        result["interleaved"] = phases.throughput(streams["interleaved"], "interleaved",
                                                  streams["interleaved_prefix"])
        result["interleaved_events_per_s"] = result["interleaved"]["events_per_s"]
        pct, achieved = phases.latency(streams["paced"], rate, "time-ordered")
        result.update(pct, latency_rate_achieved=achieved)
        if streams["sustained"]:
            half = max(1.0, round(result["events_per_s"] / 2))
            pct, achieved = phases.latency(streams["sustained"][:max(int(half * 20), 100)],
                                           half, "half load")
            result["half_load"] = {"rate": half, "rate_achieved": achieved, **pct}
    finally:
        for c in (producer, rankings):
            if c is not None:
                c.close()
        if job is not None:
            job.stop()
    return result


def _tool_phases(settings: Settings, items: list[dict], all_events: list[dict],
                 skip_embedding: bool, embed_texts: int, scale_items: int) -> dict:
    """The phases without the job: embedding speed, the ranker alone at catalog scale."""
    from contracts.messages import parse_item

    result: dict = {}
    if not skip_embedding:
        _say("embedding texts/s, fp32 vs bf16 vs int8")
        now = int(time.time() * 1000)
        texts = [parse_item(json.dumps(it).encode(), now_ms=now).text()
                 for it in items[:embed_texts]]
        result["embedding"] = embedding_speed(settings, texts)
        _say(json.dumps(result["embedding"]))
    if scale_items:
        _say(f"the ranker alone, {len(items)} items exact vs {scale_items} "
             "via candidates + ANN")
        result["scale"] = catalog_scale(settings, items, all_events, scale_items=scale_items)
        large = result["scale"]["large"]
        result.update(ann_catalog=large["catalog"],
                      ann_candidate_recall_at_10=large["candidate_recall_at_10"],
                      ann_recall_at_10=large["ann_recall_at_10"],
                      ann_vs_exact_rankings_per_s=result["scale"]["large_vs_small"])
    return result


def run_bench(settings: Settings, data_dir: str, events: int = 10_000,
              latency_events: int = 3000, rate: float = 2000.0, parallelism: int = 1,
              embed_texts: int = 512, out_dir: str = ".run/bench",
              skip_embedding: bool = False, scale_items: int = 100_000,
              taskmanagers: int = 0) -> dict:
    from jobs.runtime import prepare_process_environment
    from streamrank.kafka_local import LocalBroker, create_topics
    from streamrank.replay import read_events, read_items

    prepare_process_environment()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    parallelism = taskmanagers or parallelism
    settings = _bench_settings(settings, out, tag, parallelism, taskmanagers)
    items = read_items(data_dir)
    all_events = read_events(data_dir, limit=2 * events + 2 * latency_events,
                             id_prefix=f"b{tag}")
    streams = {"burst": all_events[:events], "prefix": f"b{tag}-",
               "interleaved": interleaved(all_events[events:2 * events], f"i{tag}"),
               "interleaved_prefix": f"i{tag}-",
               "paced": all_events[2 * events:2 * events + latency_events],
               "sustained": all_events[2 * events + latency_events:]}
    result: dict = {"catalog": len(items), "parallelism": parallelism,
                    "runtime": (f"standalone cluster, {taskmanagers} TaskManager(s) x 1 slot"
                                if taskmanagers else "MiniCluster"),
                    "events": len(streams["burst"]), "latency_events": len(streams["paced"]),
                    "latency_rate": rate, "cores": _cores(),
                    "delivery": settings.kafka.delivery_guarantee,
                    "state_backend": settings.flink.state_backend,
                    "emit_window_ms": settings.ranking.emit_window_ms}
    _say(f"{len(items)} items, {events} + {events} (interleaved) + {latency_events} events, "
         f"parallelism {parallelism}")
    broker = LocalBroker(settings.local_kafka)
    started = broker.pid() is None
    broker.up()
    try:
        loop_topic = f"bench-{tag}-loop-rankings"
        create_topics(settings.kafka, extra=(loop_topic,))
        result.update(_job_phases(settings, out, taskmanagers, items, streams, rate))
        _say("plain kafka-python + numpy loop, same topics, same step and coalescing")
        n_loop = sum(len(streams[k]) for k in ("burst", "interleaved", "paced", "sustained"))
        loop = plain_loop(settings, n_loop, loop_topic)
        result["loop_events_per_s"] = loop["events_per_s"]
        result["ratio_vs_loop"] = round(result["events_per_s"] / loop["events_per_s"], 3) \
            if loop["events_per_s"] else None
        _say(f"loop: {loop['events_per_s']} events/s")
    finally:
        if started:
            broker.down()
    result.update(_tool_phases(settings, items, all_events, skip_embedding, embed_texts,
                               scale_items))
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
    ax.bar(["job, time-ordered", "job, interleaved", "plain loop"],
           [result.get("events_per_s") or 0, result.get("interleaved_events_per_s") or 0,
            result.get("loop_events_per_s") or 0],
           color=["#3b7dd8", "#7fb0ea", "#999999"])
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
