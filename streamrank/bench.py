"""``streamrank bench``: the job against a plain consumer loop, on the same topics.

One invocation, phases run one after the other so they do not compete for the cores:

0. **warm-up**: ``--warmup-events`` events (after all the measured ones in the dataset, from
   users of their own) through the job and the skeleton before they are measured, so that
   the figures are a running job's rather than those of a JVM still compiling its hot paths
   (the JIT compiler took ~30% of a core over the first ~10 s of events); the job's half at
   once, half at ``--rate``, so that the paced phases' paths (small fetches and produce
   requests, in the job and in the broker) are compiled too; 0 measures from a cold start;
1. **throughput**: the job (MiniCluster, ``--parallelism``; or, with ``--taskmanagers N``, a
   standalone cluster of N one-slot TaskManagers at parallelism N: each TaskManager has its
   own Python interpreter, which is how the job scales out) with the catalog loaded and cached;
   ``--events`` events produced at once, (a) in time order (people rate in bursts: most
   consecutive events are the same user's) and (b) ``--events`` more, interleaved so that
   consecutive events come from different users (each window ranks many users); events/s =
   events / (last ranking received - first event sent), and the rankings it took;
2. **latency**: ``--latency-events`` more events at a fixed ``--rate`` (2,000/s), then as
   many (at most ~20 s' worth) at half that rate (``half_rate``: 1,000/s); from each event's
   production to the first ranking that covers it, percentiles, and each event's (sent,
   latency, and when the job emitted the ranking) in ``latency-<phase>.csv``. Each latency
   phase starts once the job has settled (no events for ``popularity_emit_interval_ms +
   neighbours_emit_interval_ms`` + 1 s): the statistics of the burst before it reach the
   rankers up to that late, and would otherwise be measured as the fixed rate's. The paced
   load generator is Kafka's Java client (``streamrank.paced_producer``; kafka-python
   without a JDK: ``paced_load_generator`` says which), on the same cores;
3. **skeleton**: ``jobs/skeleton_job.py``, the job's sources, sinks, parsing, keying and state
   accesses without its model, on the time-ordered events: the ceiling of the job's shape
   (``ratio_vs_skeleton``; MiniCluster runs only);
4. **plain loop**: one Python process, kafka-python + numpy, reading the same ``items`` and
   ``events`` topics and running the same per-event step with the same per-window
   coalescing (``recsys.user_step.LocalUsers``), the item statistics inline, writing
   rankings to its own topic; events/s over all the events;
5. **embedding**: texts/s of the configured model at fp32, bf16 and int8 (CPU), with the fast
   paths' mean cosine to fp32;
6. **scale**: the ranker alone on the catalog, exact, and on a derived catalog of
   ``--scale-items`` rows through candidates + ANN.

Each throughput phase also reports the CPU share of the job, the broker and the load
generator (this process), as ``cpu_share_*`` (CPU seconds over wall seconds x cores).

Phases 1-3 are in ``bench_job.py``, the plain loop (4) in ``bench_loop.py``, phases 5 and
6 in ``bench_ranker.py``; this module runs them in order and writes the report.

Writes ``bench.json`` and ``bench.png`` under ``--out``; the last line printed is one JSON
object with ``events_per_s``, ``interleaved_events_per_s``, ``loop_events_per_s``,
``ratio_vs_loop``, ``skeleton_events_per_s``, ``ratio_vs_skeleton``, ``p50_ms``,
``p95_ms``, ``p99_ms``, ``catalog``, ``parallelism`` and more.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

from contracts.config import Settings, Topics
from streamrank.bench_job import bench_say, cores, job_phases, skeleton_phase

log = logging.getLogger("streamrank.bench")


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
    for role in Topics.roles():
        over[f"kafka.topics.{role}"] = f"bench-{tag}-{role.replace('_', '-')}"
    if taskmanagers:
        over.update({"cluster.taskmanagers": taskmanagers, "cluster.slots_per_taskmanager": 1,
                     "cluster.dir": str((out / "cluster").resolve())})
    return settings.replace(**over)


def _tool_phases(settings: Settings, items: list[dict], all_events: list[dict],
                 skip_embedding: bool, embed_texts: int, scale_items: int) -> dict:
    """The phases without the job: embedding speed, the ranker alone at catalog scale."""
    from contracts.messages import parse_item
    from streamrank.bench_ranker import catalog_scale, embedding_speed

    result: dict = {}
    if not skip_embedding:
        bench_say("embedding texts/s, fp32 vs bf16 vs int8")
        now = int(time.time() * 1000)
        texts = [parse_item(json.dumps(it).encode(), now_ms=now).text()
                 for it in items[:embed_texts]]
        result["embedding"] = embedding_speed(settings, texts)
        bench_say(json.dumps(result["embedding"]))
    if scale_items:
        bench_say(f"the ranker alone, {len(items)} items exact vs {scale_items} "
             "via candidates + ANN")
        result["scale"] = catalog_scale(settings, items, all_events, scale_items=scale_items)
        large = result["scale"]["large"]
        result.update(ann_catalog=large["catalog"],
                      ann_candidate_recall_at_10=large["candidate_recall_at_10"],
                      ann_recall_at_10=large["ann_recall_at_10"],
                      ann_vs_exact_rankings_per_s=result["scale"]["large_vs_small"])
    return result


def _streams(all_events: list[dict], events: int, latency_events: int, tag: str,
             warmup: int = 0) -> dict:
    """The phases' event streams: time-ordered, interleaved, paced, sustained; and the
    warm-up, ``warmup`` events after all of them, from users of their own (``w``-prefixed
    ids, so no measured user's state is touched)."""
    end = 2 * events + 2 * latency_events
    return {"burst": all_events[:events], "prefix": f"b{tag}-",
            "interleaved": interleaved(all_events[events:2 * events], f"i{tag}"),
            "interleaved_prefix": f"i{tag}-",
            "paced": all_events[2 * events:2 * events + latency_events],
            "sustained": all_events[2 * events + latency_events:end],
            "warmup": [{**e, "user_id": f"w{e['user_id']}", "event_id": f"w{tag}-{i}"}
                       for i, e in enumerate(all_events[end:end + warmup])]}


def _run_facts(settings: Settings, catalog: int, streams: dict, rate: float,
               parallelism: int, taskmanagers: int) -> dict:
    """What the report says about the run itself."""
    from recsys import kernel

    precision = settings.ranking.kernel_precision
    return {"catalog": catalog, "parallelism": parallelism,
            "runtime": (f"standalone cluster, {taskmanagers} TaskManager(s) x 1 slot"
                        if taskmanagers else "MiniCluster"),
            "events": len(streams["burst"]), "latency_events": len(streams["paced"]),
            "warmup_events": len(streams["warmup"]),
            "latency_rate": rate, "cores": cores(),
            "delivery": settings.kafka.delivery_guarantee,
            "state_backend": settings.flink.state_backend,
            "event_batch_ms": settings.flink.event_batch_ms,
            "emit_window_ms": settings.ranking.emit_window_ms,
            "kernel_precision": {"job": kernel.resolve(precision),
                                 "loop": kernel.chosen(precision)}}


def run_bench(settings: Settings, data_dir: str, events: int = 10_000,
              latency_events: int = 3000, rate: float = 2000.0, parallelism: int = 1,
              embed_texts: int = 512, out_dir: str = ".run/bench",
              skip_embedding: bool = False, scale_items: int = 100_000,
              taskmanagers: int = 0, warmup_events: int = 3000) -> dict:
    from jobs.runtime import prepare_process_environment
    from streamrank.bench_loop import plain_loop
    from streamrank.kafka_local import LocalBroker, create_topics, delete_topics_with_prefix
    from streamrank.replay import read_events, read_items

    prepare_process_environment()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    parallelism = taskmanagers or parallelism
    settings = _bench_settings(settings, out, tag, parallelism, taskmanagers)
    items = read_items(data_dir)
    all_events = read_events(data_dir, limit=2 * events + 2 * latency_events + warmup_events,
                             id_prefix=f"b{tag}")
    streams = _streams(all_events, events, latency_events, tag, warmup_events)
    result = _run_facts(settings, len(items), streams, rate, parallelism, taskmanagers)
    bench_say(f"{len(items)} items, {events} + {events} (interleaved) + {latency_events} events, "
         f"parallelism {parallelism}")
    broker = LocalBroker(settings.local_kafka)
    started = broker.pid() is None
    broker.up()
    try:
        loop_topic = f"bench-{tag}-loop-rankings"
        create_topics(settings.kafka, extra=(loop_topic,))
        result.update(job_phases(settings, out, taskmanagers, items, streams, rate,
                                  broker.pid()))
        if not taskmanagers:
            result["skeleton"] = skeleton_phase(settings, out, streams["burst"], tag,
                                                 broker.pid(), streams["warmup"])
            result["skeleton_events_per_s"] = result["skeleton"]["events_per_s"]
            result["ratio_vs_skeleton"] = round(
                result["events_per_s"] / result["skeleton_events_per_s"], 3)
        bench_say("plain kafka-python + numpy loop, same topics, same step and coalescing")
        n_loop = sum(len(streams[k]) for k in ("burst", "interleaved", "paced", "sustained",
                                               "warmup"))
        loop = plain_loop(settings, n_loop, loop_topic)
        result["loop_events_per_s"] = loop["events_per_s"]
        result["ratio_vs_loop"] = round(result["events_per_s"] / loop["events_per_s"], 3) \
            if loop["events_per_s"] else None
        bench_say(f"loop: {loop['events_per_s']} events/s")
    finally:
        delete_topics_with_prefix(settings.kafka, f"bench-{tag}-")  # the run's own topics
        if started:
            broker.down()
    result.update(_tool_phases(settings, items, all_events, skip_embedding, embed_texts,
                               scale_items))
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    result["plot"] = str(_plot(result, out / "bench.png"))
    return result


def _plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    emb = result.get("embedding") or {}
    fig, axes = plt.subplots(1, 3 if emb else 2, figsize=(13, 4) if emb else (9, 4))
    ax = axes[0]
    ax.bar(["job,\ntime-ordered", "job,\ninterleaved", "skeleton,\ntime-ordered",
            "plain loop"],
           [result.get("events_per_s") or 0, result.get("interleaved_events_per_s") or 0,
            result.get("skeleton_events_per_s") or 0, result.get("loop_events_per_s") or 0],
           color=["#3b7dd8", "#7fb0ea", "#cccccc", "#999999"])
    ax.tick_params(axis="x", labelsize=8)
    ax.set_ylabel("events/s")
    ax.set_title(f"throughput, catalog {result['catalog']}, p={result['parallelism']}"
                 + (f", {result['parallelism']} TMs" if "cluster" in result["runtime"] else ""),
                 fontsize=9)
    ax = axes[1]
    qs = ["p50_ms", "p95_ms", "p99_ms"]
    half = result.get("half_rate") or {}
    x = np.arange(len(qs))
    ax.bar(x - 0.2, [result.get(q) or 0 for q in qs], 0.4, color="#3b7dd8",
           label=f"{result['latency_rate']:g} ev/s")
    ax.bar(x + 0.2, [half.get(q) or 0 for q in qs], 0.4, color="#7fb0ea",
           label=f"{half.get('rate', 0):g} ev/s")
    ax.set_xticks(x, [q[:3] for q in qs])
    ax.set_ylabel("ms")
    ax.legend(fontsize=8)
    ax.set_title("latency, production to ranking, time-ordered", fontsize=9)
    if emb:
        ax = axes[2]
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
