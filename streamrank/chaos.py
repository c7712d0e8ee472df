"""``streamrank chaos``: prove exactly-once rankings through TaskManager crashes.

One run: the local broker, a standalone Flink cluster from the wheel (JobManager + one
TaskManager), the job submitted with exactly-once delivery, a dataset replayed (optionally
with malformed records mixed in), TaskManagers killed with SIGKILL at random points of the
job's progress and restarted. Then ``rankings`` is read with ``isolation.level =
read_committed`` and checked against what was replayed:

* every valid event has exactly one committed ranking (matched on ``event_id``): ``lost``
  and ``duplicates`` must be 0;
* every user's final state (the ``state_digest`` of their last ranking) equals the state a
  failure-free, in-process replay of the same events through the same model code reaches:
  ``state_mismatch_users`` must be 0;
* every malformed record is in the events DLQ with a reason (``dlq_missing`` must be 0), and
  with no kills the job never restarted.

The learned fusion weights depend on which lists were shown, which depends on when item
statistics reached the ranker (a timing, not a function of the replay), so the run pins
``ranking.learning_rate`` to 0: everything else in the state must match bit for bit.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from contracts.config import REPO_ROOT, Settings, Topics
from contracts.messages import InvalidRecord, parse_event
from jobs.runtime import free_port

log = logging.getLogger("streamrank.chaos")


# -- malformed input ------------------------------------------------------------------------

def malformed_records(n: int, rng: random.Random, max_id_length: int = 256,
                      max_record_bytes: int = 65_536) -> list[tuple[bytes, bytes, str]]:
    """``n`` bad ``events`` records ``(key, value, expected reason)`` of every kind the
    validator rejects."""
    now = int(time.time() * 1000)
    good = {"event_id": "x", "user_id": "u", "item_id": "1", "type": "click", "ts": now}

    def with_(**kw) -> bytes:
        rec = dict(good, **kw)
        return json.dumps({k: v for k, v in rec.items() if v is not ...}).encode()

    kinds: list[tuple[str, Callable[[], bytes]]] = [
        ("not_json", lambda: b'{"user_id": "u", "type": "cli'),
        ("not_json", lambda: b'{"user_id": ' + rng.randbytes(rng.randint(1, 30)).hex().encode()),
        ("invalid_utf8", lambda: b"\xff\xfe" + rng.randbytes(rng.randint(1, 30))),
        ("not_object", lambda: b"[1, 2, 3]"),
        ("missing_field", lambda: with_(user_id=...)),
        ("missing_field", lambda: with_(ts=...)),
        ("bad_type", lambda: with_(ts="yesterday")),
        ("bad_type", lambda: with_(user_id=[1, 2])),
        ("bad_type", lambda: with_(value="five")),
        ("unknown_type", lambda: with_(type="teleport")),
        ("ts_out_of_range", lambda: with_(ts=now + 10 * 86_400_000)),
        ("ts_out_of_range", lambda: with_(ts=-5)),
        ("empty_id", lambda: with_(item_id="  ")),
        ("id_too_long", lambda: with_(user_id="u" * (max_id_length + 1))),
        ("too_large", lambda: with_(pad="x" * (max_record_bytes + 1))),
        # The poison kinds that once crash-looped the job (issue 11).
        ("ts_out_of_range", lambda: with_(ts=...)[:-1] + b',"ts":1' + b"0" * 400 + b"}"),
        ("ts_out_of_range", lambda: with_(ts=...)[:-1] + b',"ts":1e400}'),
        ("not_json", lambda: with_(ts=...)[:-1] + b',"ts":' + b"9" * 5000 + b"}"),
        ("bad_type", lambda: with_(type="rating", value=...)[:-1] + b',"value":1'
         + b"0" * 400 + b"}"),
        ("invalid_unicode", lambda: with_(user_id=...)[:-1] + b',"user_id":"u\\ud800"}'),
        ("invalid_unicode", lambda: with_(item_id=...)[:-1] + b',"item_id":"\\udfff"}'),
        ("bad_id", lambda: with_(user_id="a\u2028b")),
        ("bad_id", lambda: with_(item_id="x\u202ey")),
        ("bad_id", lambda: with_(user_id="c\u0085")),
        ("not_json", lambda: b"\x01" * rng.randint(1000, max_record_bytes - 1)),
    ]
    out = []
    for i in range(n):
        reason, make = kinds[i % len(kinds)]
        out.append((f"junk-{i}".encode(), make(), reason))
    rng.shuffle(out)
    return out


# -- the reference: a failure-free, in-process replay ------------------------------------------

def reference_digests(items: list[dict], events: list[dict], settings: Settings,
                      now_ms: Optional[int] = None) -> dict[str, str]:
    """Each user's final ``state_digest`` after ``events``, computed in this process with the
    ranker's own per-event step (:class:`LocalUsers`) over the same catalog vectors."""
    from recsys.params import ModelParams
    from recsys.user_state import UserState
    from recsys.user_step import LocalUsers, StepConfig
    from streamrank.offline import catalog_of, embed_items

    v = settings.validation
    now_ms = now_ms or int(time.time() * 1000)
    parsed, vectors, model = embed_items(settings, items, now_ms=now_ms)
    users = LocalUsers(catalog_of(parsed, vectors), ModelParams.from_settings(settings.ranking),
                       StepConfig.from_settings(settings.ranking), model, explain=False)
    for ev in events:
        try:
            parsed_event = parse_event(json.dumps(ev).encode(), now_ms=now_ms,
                                       max_id_length=v.max_id_length)
        except InvalidRecord:
            continue
        users.event(parsed_event, now_ms)
    users.flush()
    return {u: st.digest() for u, st in users.states.items() if isinstance(st, UserState)}


# -- the run --------------------------------------------------------------------------------

@dataclass
class ChaosReport:
    events: int = 0
    rankings: int = 0
    lost: int = 0
    duplicates: int = 0
    state_mismatch_users: int = 0
    kills: int = 0
    requested_kills: int = 0
    broker_restarts: int = 0
    requested_broker_restarts: int = 0
    users: int = 0
    malformed: int = 0
    dlq: int = 0
    dlq_missing: int = 0
    dlq_reasons: dict = field(default_factory=dict)
    restarts: int = 0
    seconds: float = 0.0
    lost_examples: list = field(default_factory=list)
    duplicate_examples: list = field(default_factory=list)
    mismatch_examples: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        ok = (self.lost == 0 and self.duplicates == 0 and self.state_mismatch_users == 0
              and self.dlq_missing == 0 and self.kills >= self.requested_kills
              and self.broker_restarts >= self.requested_broker_restarts)
        if self.kills == 0 and self.broker_restarts == 0:
            ok = ok and self.restarts == 0  # bad input alone never restarts the job
        return ok

    def summary(self) -> dict:
        keys = ("events", "rankings", "lost", "duplicates", "state_mismatch_users", "kills",
                "broker_restarts", "users", "malformed", "dlq", "dlq_missing", "restarts",
                "seconds")
        return {k: getattr(self, k) for k in keys}


def chaos_settings(settings: Settings, run_dir: Path, tag: str, parallelism: int,
                   checkpoint_ms: int, rest_port: int, rpc_port: int) -> Settings:
    """The run's own topics, consumer group, transactional ids, checkpoints and cluster."""
    over = {
        "kafka.delivery_guarantee": "exactly-once",
        "kafka.group_id": f"streamrank-chaos-{tag}",
        "kafka.transactional_id_prefix": f"streamrank-chaos-{tag}",
        "kafka.partitions": max(settings.kafka.partitions, parallelism),
        "flink.parallelism": parallelism,
        "flink.checkpoint_interval_ms": checkpoint_ms,
        "flink.checkpoint_dir": str(run_dir / "checkpoints"),
        "flink.restart_strategy": "fixed-delay",
        "flink.restart_delay_ms": 1000,
        "cluster.dir": str(run_dir / "cluster"),
        "cluster.taskmanagers": 1,
        "cluster.slots_per_taskmanager": max(2, parallelism),
        "cluster.rest_port": rest_port,
        "cluster.rpc_port": rpc_port,
        "ranking.emit_state_digest": True,
        "ranking.learning_rate": 0.0,
        "validation.max_record_bytes": 65_536,
    }
    for role in Topics.roles():
        over[f"kafka.topics.{role}"] = f"chaos-{tag}-{role.replace('_', '-')}"
    return settings.replace(**over)


class Harness:
    """Broker + cluster + topics + committed-output readers for one run; a context manager
    that stops what it started."""

    def __init__(self, settings: Settings, run_dir: Path, keep_broker: bool = False):
        from streamrank.cluster import StandaloneCluster
        from streamrank.kafka_local import LocalBroker

        self.settings = settings
        self.run_dir = run_dir
        self.broker = LocalBroker(settings.local_kafka)
        self.started_broker = False
        self.owns_broker = False  # the local broker of this machine serves the run
        self.keep_broker = keep_broker
        self.cluster = StandaloneCluster(settings)
        self.rankings = self.dlq = None
        self.producer = None

    def __enter__(self) -> "Harness":
        from streamrank.kafka_local import create_topics
        from streamrank.replay import make_producer
        from streamrank.watch import RankingsReader, TopicReader

        bootstrap = self.settings.kafka.bootstrap_servers
        if bootstrap == self.broker.bootstrap:  # the local broker: start it unless running
            self.owns_broker = True
            self.started_broker = self.broker.pid() is None
            self.broker.up()
        create_topics(self.settings.kafka)
        self.cluster.up()
        props = self.settings.kafka.properties
        self.rankings = RankingsReader(bootstrap, self.settings.kafka.topics.rankings, props)
        self.dlq = TopicReader(bootstrap, self.settings.kafka.topics.events_dlq, props)
        self.producer = make_producer(bootstrap, props)
        return self

    def __exit__(self, *exc) -> None:
        for closer in (self.producer, self.rankings, self.dlq):
            if closer is not None:
                try:
                    closer.close()
                except Exception as err:  # noqa: BLE001 - still stop the cluster and broker
                    log.warning("chaos: closing %s failed: %s", type(closer).__name__, err)
        self.cluster.down()
        if self.started_broker and not self.keep_broker:
            self.broker.down()

    def submit(self, **kw) -> str:
        job_id = self.cluster.submit(self.settings, **kw)
        self.cluster.wait_job_running(job_id, wait_s=180)
        return job_id

    def load_catalog(self, items: list[dict], timeout_s: float = 900) -> None:
        from streamrank.replay import produce
        from streamrank.watch import wait_for_catalog

        produce(self.producer, self.settings.kafka.topics.items, items, "item_id", desc="items")
        wait_for_catalog(self.producer, self.settings, self.rankings, items[-1]["item_id"],
                         len(items), timeout_s=timeout_s)

    def ranked(self, event_ids: list[str]) -> int:
        return self.rankings.count_ranked(event_ids)

    def wait_ranked(self, event_ids: list[str], timeout_s: float, idle_s: float = 180,
                    on_tick: Optional[Callable[[int], None]] = None) -> int:
        return self.rankings.wait_ranked(event_ids, timeout_s, idle_s=idle_s, on_tick=on_tick)


def check(report: ChaosReport, harness: Harness, events: list[dict], reference: dict[str, str],
          malformed: list[tuple[bytes, bytes, str]]) -> ChaosReport:
    """Fill ``report`` from what was committed to ``rankings`` and the DLQ."""
    from streamrank.watch import PROBE_USER

    ids = [e["event_id"] for e in events]
    by_event = {e: list(t) for e, t in harness.rankings.by_event.items()}
    report.events = len(ids)
    report.rankings = sum(len(by_event.get(e, ())) for e in ids)
    lost = [e for e in ids if not by_event.get(e)]
    dups = [e for e in ids if len(by_event.get(e, ())) > 1]
    report.lost, report.lost_examples = len(lost), lost[:5]
    report.duplicates = sum(len(by_event[e]) - 1 for e in dups)
    report.duplicate_examples = dups[:5]
    latest = {r["user_id"]: r for r in harness.rankings.latest_rankings()}
    mismatched = [u for u, digest in reference.items()
                  if u != PROBE_USER and (latest.get(u) or {}).get("state_digest") != digest]
    report.users = len(reference)
    report.state_mismatch_users = len(mismatched)
    report.mismatch_examples = mismatched[:5]
    dlq = harness.dlq.values()
    report.dlq = len(dlq)
    report.dlq_reasons = dict(Counter(r["reason"] for r in dlq))
    expected = Counter(reason for _, _, reason in malformed)
    got = Counter(r["reason"] for r in dlq)
    report.dlq_missing = sum(max(0, n - got.get(reason, 0)) for reason, n in expected.items())
    return report


class Faults:
    """The run's fault points: random fractions of the job's committed progress, each a
    TaskManager kill or a broker restart; :meth:`tick` fires the next one once the job has
    committed something since the last (every fault then hits a job that recovered)."""

    def __init__(self, h: "Harness", report: "ChaosReport", rng: random.Random, total: int,
                 kills: int, broker_restarts: int, bar):
        self.h, self.report, self.rng, self.total, self.bar = h, report, rng, total, bar
        self.points = sorted([(rng.uniform(0.1, 0.85), "kill") for _ in range(kills)]
                             + [(rng.uniform(0.1, 0.85), "broker")
                                for _ in range(broker_restarts)])
        self.last_at = -1

    def tick(self, n: int) -> None:
        self.bar.update(n - self.bar.n)
        if self.points and n >= self.points[0][0] * self.total and n > self.last_at:
            _, kind = self.points.pop(0)
            self.last_at = n
            self._restart_broker(n) if kind == "broker" else self._kill(n)

    def _restart_broker(self, n: int) -> None:
        self.h.broker.down()
        self.report.broker_restarts += 1
        self.bar.write(f"chaos: broker restart {self.report.broker_restarts}: Kafka stopped "
                       f"at {n}/{self.total} committed rankings")
        time.sleep(self.rng.uniform(1.0, 4.0))
        self.h.broker.up(wait_s=120)
        self.bar.write("chaos: broker back; the job's sources, sinks and transactions resume")

    def _kill(self, n: int) -> None:
        pid = self.h.cluster.kill_taskmanager()
        self.report.kills += 1
        self.bar.write(f"chaos: kill {self.report.kills}: SIGKILL TaskManager pid {pid} at "
                       f"{n}/{self.total} committed rankings")
        time.sleep(self.rng.uniform(0.5, 3.0))
        self.h.cluster.start_taskmanager()
        self.h.cluster.wait_ready(1, 120)
        self.bar.write("chaos: a new TaskManager registered; the job restores its last "
                       "checkpoint")


def _start_replay(h: "Harness", topic: str, events: list[dict], junk: list, rng: random.Random,
                  rate: float) -> threading.Thread:
    """Send the events with the malformed records at random positions, in a thread."""
    from streamrank.replay import RateLimiter

    stream: list[tuple[bytes, bytes]] = [
        (e["user_id"].encode(), json.dumps(e, separators=(",", ":")).encode()) for e in events]
    for key, value, _ in junk:
        stream.insert(rng.randrange(len(stream) + 1), (key, value))

    def replay() -> None:
        limiter = RateLimiter(rate)
        for key, value in stream:
            limiter.wait()
            h.producer.send(topic, key=key, value=value)
        h.producer.flush()

    sender = threading.Thread(target=replay, name="chaos-replay", daemon=True)
    sender.start()
    return sender


def run_chaos(settings: Settings, data_dir: str, limit: Optional[int] = 20_000, kills: int = 2,
              malformed: int = 0, parallelism: int = 1, rate: float = 0.0,
              checkpoint_ms: int = 2000, seed: Optional[int] = None,
              timeout_s: float = 3600, progress: bool = True,
              broker_restarts: int = 0) -> ChaosReport:
    from tqdm import tqdm

    from streamrank.replay import read_events, read_items

    seed = seed if seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:8]
    run_dir = (REPO_ROOT / ".run" / "chaos" / tag).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = chaos_settings(settings, run_dir, tag, parallelism, checkpoint_ms, free_port(),
                         free_port())
    items = read_items(data_dir)
    events = read_events(data_dir, limit=limit)
    junk = malformed_records(malformed, rng, cfg.validation.max_id_length,
                             cfg.validation.max_record_bytes)
    print(f"chaos: run {tag} (seed {seed}): {len(items)} items, {len(events)} events, "
          f"{len(junk)} malformed, {kills} TaskManager kills, {broker_restarts} broker "
          f"restarts, parallelism {parallelism}; work dir {run_dir}", flush=True)
    t_start = time.monotonic()
    report = ChaosReport(kills=0, requested_kills=kills, malformed=len(junk),
                         requested_broker_restarts=broker_restarts)
    ids = [e["event_id"] for e in events]
    with Harness(cfg, run_dir) as h:
        if broker_restarts and not h.owns_broker:
            raise ValueError("--broker-restarts needs the local broker "
                             f"(local_kafka, {h.broker.bootstrap}); kafka.bootstrap_servers is "
                             f"{cfg.kafka.bootstrap_servers}")
        job_id = h.submit()
        print(f"chaos: job {job_id} RUNNING on {h.cluster.rest}", flush=True)
        h.load_catalog(items)
        reference = reference_digests(items, events, cfg)
        sender = _start_replay(h, cfg.kafka.topics.events, events, junk, rng, rate)
        bar = tqdm(total=len(ids), desc="ranked (committed)", unit="ev", disable=not progress,
                   mininterval=0.5)
        faults = Faults(h, report, rng, len(ids), kills, broker_restarts, bar)
        h.wait_ranked(ids, timeout_s=timeout_s, on_tick=faults.tick)
        sender.join()
        bar.close()
        # Dead letters of the last records and late duplicates surface within a checkpoint
        # or two: give them that time before judging.
        time.sleep(3 * checkpoint_ms / 1000 + 2)
        report.restarts = h.cluster.restarts(job_id)
        check(report, h, events, reference, junk)
    report.seconds = round(time.monotonic() - t_start, 1)
    if report.ok:
        shutil.rmtree(run_dir, ignore_errors=True)
    return report
