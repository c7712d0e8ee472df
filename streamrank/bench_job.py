"""The bench's phases against the job (``streamrank bench``, see ``bench.py``): the job on a
MiniCluster or a standalone cluster, its throughput and latency phases, the skeleton job,
and the CPU each process takes meanwhile."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import numpy as np

from contracts.config import Settings
from streamrank.flink_rest import TERMINAL_STATES
from streamrank.progress import say


def bench_say(msg: str) -> None:
    say("bench", msg)


def cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    a = np.asarray(values, dtype=float)
    return {f"p{q}_ms": round(float(np.percentile(a, q)), 1) for q in (50, 95, 99)}


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
        if state in TERMINAL_STATES or state == "FAILING":
            raise RuntimeError(f"job {self.job_id} is {state}; logs in {self.cluster.root}/log")

    def stop(self) -> None:
        try:
            if self.job_id:
                self.cluster.cancel(self.job_id)
        finally:
            self.cluster.down()


class CpuMeter:
    """CPU seconds of the job (its whole process group: client, MiniCluster JVM, Python),
    the broker and this process (the load generator: producing events, reading rankings),
    from /proc; :meth:`shares` gives each one's share of the machine over an interval."""

    def __init__(self, job_pgid: Optional[int], broker_pid: Optional[int]):
        import os

        self.groups = {"job": job_pgid, "broker": broker_pid, "load_generator": os.getpid()}
        self.tick = os.sysconf("SC_CLK_TCK")

    def _seconds(self) -> dict:
        import os

        out = dict.fromkeys(self.groups, 0.0)
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            cpu = (int(fields[11]) + int(fields[12])) / self.tick  # utime + stime
            pgid = int(fields[2])
            for name, ident in self.groups.items():
                if ident is not None and (int(pid) == ident or
                                          (name == "job" and pgid == ident)):
                    out[name] += cpu
        return out

    def start(self) -> None:
        self._t0, self._c0 = time.monotonic(), self._seconds()

    def shares(self) -> dict:
        """Each one's CPU seconds since :meth:`start` over (wall seconds x cores)."""
        wall, c1 = time.monotonic() - self._t0, self._seconds()
        return {f"cpu_share_{k}": round((c1[k] - self._c0[k]) / (wall * cores()), 3)
                for k in self.groups}


class _JobPhases:
    """The phases that run against the job, on its topics, one after the other."""

    def __init__(self, settings: Settings, job, rankings, producer,
                 cpu: Optional[CpuMeter] = None, out: Optional[Path] = None):
        self.settings, self.job, self.rankings, self.producer = settings, job, rankings, producer
        self.out = out  # where each latency phase's per-event CSV goes
        self.load_generator = ""  # of the paced phases: "java" or "kafka-python"
        self.topic = settings.kafka.topics.events
        self.cpu = cpu

    def throughput(self, events: list[dict], label: str, prefix: str) -> dict:
        """All ``events`` at once: events/s from the first sent to the last ranking received,
        and the rankings it took (coalescing covers a burst of one user with few)."""
        from streamrank.replay import produce

        bench_say(f"throughput, {label} (all events at once)")
        if self.cpu is not None:
            self.cpu.start()
        t_send = time.time() * 1000
        produce(self.producer, self.topic, events, "user_id", desc=f"events ({label})")
        ids = [e["event_id"] for e in events]
        wait_all(self.rankings, ids, self.job)
        seconds = (max(self.rankings.by_event[i][0] for i in ids) - t_send) / 1000
        n_rankings = self.rankings.rankings_covering(prefix)
        res = {"events_per_s": round(len(ids) / seconds, 1), "rankings": n_rankings,
               "rankings_per_s": round(n_rankings / seconds, 1),
               **(self.cpu.shares() if self.cpu is not None else {})}
        bench_say(f"job, {label}: {json.dumps(res)}")
        return res

    def warm_up(self, events: list[dict], rate: Optional[float] = None) -> None:
        """``events`` through the job, unmeasured (see ``bench.py``, phase 0): all at once,
        or with a ``rate`` the first half at once and the second at that rate, so that the
        paths of both kinds of phase (in the job and in the broker: full fetches and produce
        batches against a few records at a time) are compiled before either is measured."""
        from streamrank.replay import produce

        if not events:
            return
        half = len(events) // 2 if rate else len(events)
        bench_say(f"warm-up: {len(events)} events"
                  + (f", half at once, half at {rate:g}/s" if rate else "") + ", not measured")
        produce(self.producer, self.topic, events[:half], "user_id", desc="events (warm-up)")
        if events[half:]:
            self._paced(events[half:], rate, "events (warm-up, paced)")
        wait_all(self.rankings, [e["event_id"] for e in events], self.job)

    def _paced(self, events: list[dict], rate: float, desc: str) -> dict[str, int]:
        """``events`` at ``rate`` (``paced_producer``): event_id -> when it was sent."""
        from streamrank.paced_producer import paced_send

        kafka = self.settings.kafka
        sent, self.load_generator = paced_send(
            self.producer, kafka.bootstrap_servers, self.topic, events, "user_id", rate,
            kafka.properties, desc=desc)
        return sent

    def latency(self, events: list[dict], rate: float, label: str) -> tuple[dict, float]:
        """``events`` at ``rate``: from each event's production to the first ranking that
        covers it, percentiles; and the rate achieved. Each event's (sent, latency, and when
        the job made that ranking: its ``emitted_ts``, same clock) goes to
        ``latency-<label>.csv`` in the output folder (to see when the slow ones happen, and
        whether before or after the job)."""
        # The statistics of what came before (a burst at full speed) reach the rankers up to
        # neighbours_emit_interval_ms later: a fixed rate is measured once they have.
        r = self.settings.ranking
        settle = (r.popularity_emit_interval_ms + r.neighbours_emit_interval_ms) / 1000 + 1
        bench_say(f"latency, {label}, at {rate:g} events/s (after {settle:g} s to settle)")
        time.sleep(settle)
        sent_at = self._paced(events, rate, "events (paced)")
        wait_all(self.rankings, [e["event_id"] for e in events], self.job)
        lat = [self.rankings.by_event[e][0] - sent_at[e] for e in sent_at]
        if self.out is not None:
            path = self.out / f"latency-{label.replace(' ', '-')}.csv"
            made = self.rankings.emitted
            path.write_text("sent_ms,latency_ms,ranked_after_ms\n" + "".join(
                f"{ms},{d},{made.get(e, 0) - ms}\n"
                for (e, ms), d in zip(sent_at.items(), lat)))
        span = (max(sent_at.values()) - min(sent_at.values())) / 1000
        pct = _percentiles(lat)
        bench_say(f"job latency at {rate:g}/s: p50 {pct['p50_ms']} ms, p95 {pct['p95_ms']} ms, "
             f"p99 {pct['p99_ms']} ms")
        return pct, round(len(events) / max(span, 1e-9), 1)


def job_phases(settings: Settings, out: Path, taskmanagers: int, items: list[dict],
                streams: dict, rate: float, broker_pid: Optional[int] = None) -> dict:
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
        cpu = None if taskmanagers else CpuMeter(job.proc.pid, broker_pid)
        phases = _JobPhases(settings, job, rankings, producer, cpu, out)
        phases.warm_up(streams["warmup"], rate)
        result.update(phases.throughput(streams["burst"], "time-ordered", streams["prefix"]))
        result["interleaved"] = phases.throughput(streams["interleaved"], "interleaved",
                                                  streams["interleaved_prefix"])
        result["interleaved_events_per_s"] = result["interleaved"]["events_per_s"]
        pct, achieved = phases.latency(streams["paced"], rate, "time-ordered")
        result.update(pct, latency_rate_achieved=achieved)
        if streams["sustained"]:
            half = rate / 2
            pct, achieved = phases.latency(streams["sustained"][:max(int(half * 20), 100)],
                                           half, "half rate")
            result["half_rate"] = {"rate": half, "rate_achieved": achieved, **pct}
        result["paced_load_generator"] = phases.load_generator
    finally:
        for c in (producer, rankings):
            if c is not None:
                c.close()
        if job is not None:
            job.stop()
    return result


def skeleton_phase(settings: Settings, out: Path, events: list[dict], tag: str,
                    broker_pid: Optional[int] = None, warmup: tuple = ()) -> dict:
    """The job's skeleton (``jobs/skeleton_job.py``: the same sources, sinks, parsing, keying
    and state accesses, no model) on its own topics, the time-ordered events all at once."""
    from streamrank.kafka_local import create_topics
    from streamrank.replay import make_producer
    from streamrank.watch import JobProcess, RankingsReader

    over = {"kafka.group_id": f"streamrank-bench-{tag}-skeleton",
            "flink.checkpoint_dir": str((out / "checkpoints" / f"{tag}-skeleton").resolve())}
    for role in ("events", "rankings", "interactions"):
        over[f"kafka.topics.{role}"] = f"bench-{tag}-skeleton-{role}"
    settings = settings.replace(**over)
    create_topics(settings.kafka)
    prefix = f"s{tag}-"
    events = [{**e, "event_id": f"{prefix}{i}"} for i, e in enumerate(events)]
    job = JobProcess(settings, out / "skeleton.log", module="jobs.skeleton_job").start()
    props = settings.kafka.properties
    rankings = RankingsReader(settings.kafka.bootstrap_servers, settings.kafka.topics.rankings,
                              props)
    producer = make_producer(settings.kafka.bootstrap_servers, props)
    try:
        from streamrank.replay import produce

        warm = [{**events[0], "event_id": f"{prefix}warm"}]  # the job is up once this is out
        produce(producer, settings.kafka.topics.events, warm, "user_id", progress=False)
        wait_all(rankings, [warm[0]["event_id"]], job, timeout_s=300)
        phases = _JobPhases(settings, job, rankings, producer,
                            CpuMeter(job.proc.pid, broker_pid))
        phases.warm_up([{**e, "event_id": f"s{e['event_id']}"} for e in warmup])
        return phases.throughput(events, "skeleton, time-ordered", prefix)
    finally:
        producer.close()
        rankings.close()
        job.stop()


def wait_all(rankings, ids: list[str], job, timeout_s: float = 3600) -> None:
    from tqdm import tqdm

    with tqdm(total=len(ids), desc="rankings", unit="ev", mininterval=0.5) as bar:
        n = rankings.wait_ranked(ids, timeout_s, job=job,
                                 on_tick=lambda n: bar.update(n - bar.n))
    if n < len(ids):
        raise TimeoutError(f"only {n} of {len(ids)} rankings after {timeout_s:.0f}s")
