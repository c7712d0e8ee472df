"""Client-side helpers around a running job: start it as a process, watch its rankings.

Used by ``streamrank demo`` and by the integration tests, so both exercise the job exactly as
a user runs it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Optional

import yaml

from contracts.config import REPO_ROOT, Settings, file_and_environment

log = logging.getLogger("streamrank.watch")

PROBE_USER = "__streamrank_probe__"


class JobProcess:
    """The streamrank job in its own process (a local MiniCluster), logging to a file."""

    def __init__(self, settings: Settings, log_path: str | os.PathLike,
                 module: str = "jobs.ranking_job"):
        self.settings = settings
        self.module = module  # or the bench's jobs.skeleton_job
        self.log_path = Path(log_path)
        # Flink's own log (JobManager/TaskManager, and the Python operators' logging in
        # thread mode) goes next to the job's stdout log.
        self.flink_log_dir = self.log_path.parent / (self.log_path.stem + "-flink")
        self.proc: Optional[subprocess.Popen] = None
        self._conf_file: Optional[str] = None

    def start(self) -> "JobProcess":
        fd, self._conf_file = tempfile.mkstemp(prefix="streamrank-", suffix=".yaml")
        data, secret_env = file_and_environment(self.settings)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(data, f)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.flink_log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        env = dict(os.environ, FLINK_LOG_DIR=str(self.flink_log_dir.resolve()), **secret_env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "--config", self._conf_file],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env)
        log.close()
        return self

    def flink_log(self) -> str:
        return "\n".join(p.read_text(errors="replace")
                         for p in sorted(self.flink_log_dir.glob("*.log")))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the job exited with code {self.proc.returncode}; last log "
                               f"lines of {self.log_path}:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self, grace_s: float = 15.0) -> None:
        """Stop the job's whole process group: the Python process and the JVM it started (the
        Flink gateway), which can outlive it when a shutdown hook hangs; whatever is left
        after ``grace_s`` is killed."""
        if self.proc is not None:
            group = self.proc.pid
            if self.proc.poll() is None:
                os.killpg(group, signal.SIGTERM)
                try:
                    self.proc.wait(grace_s)
                except subprocess.TimeoutExpired:
                    os.killpg(group, signal.SIGKILL)
                    self.proc.wait()
            deadline = time.monotonic() + grace_s
            while _group_alive(group) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _group_alive(group):
                log.warning("job processes outlived the job by %.0fs; killing them", grace_s)
                os.killpg(group, signal.SIGKILL)
        if self._conf_file:
            Path(self._conf_file).unlink(missing_ok=True)
            self._conf_file = None


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class TopicReader:
    """Reads a topic from the beginning in a background thread and keeps what it saw."""

    def __init__(self, bootstrap: str, topic: str, properties: Optional[dict] = None):
        from kafka import KafkaConsumer

        from contracts.kafka_clients import python_client_kwargs

        self.topic = topic
        self._consumer = KafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
            enable_auto_commit=False, group_id=None, fetch_max_wait_ms=20,
            isolation_level="read_committed",
            **python_client_kwargs(properties or {}, "consumer"))
        self.records: list[tuple[Optional[bytes], Optional[bytes], int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"read-{topic}")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self._consumer.poll(timeout_ms=50)
            now = int(time.time() * 1000)
            for msgs in batch.values():
                for m in msgs:
                    self._on_record(m.key, m.value, now)

    def _on_record(self, key, value, received_ms: int) -> None:
        with self._lock:
            self.records.append((key, value, received_ms))

    def count(self) -> int:
        with self._lock:
            return len(self.records)

    def values(self) -> list[dict]:
        with self._lock:
            return [json.loads(v) for _, v, _ in self.records if v is not None]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


class RankingsReader(TopicReader):
    """A TopicReader for ``rankings`` that indexes by user and by event id."""

    def __init__(self, bootstrap: str, topic: str, properties: Optional[dict] = None):
        self.latest: dict[str, dict] = {}
        self.by_event: dict[str, list[int]] = defaultdict(list)  # event_id -> receive times
        # event_id -> when the job made the first ranking that covers it (its emitted_ts)
        self.emitted: dict[str, int] = {}
        self.tombstones: list[str] = []
        super().__init__(bootstrap, topic, properties)

    def _on_record(self, key, value, received_ms: int) -> None:
        with self._lock:
            self.records.append((key, value, received_ms))
            if value is None:
                self.tombstones.append(key.decode() if key else "")
                return
            rec = json.loads(value)
            self.latest[rec["user_id"]] = rec
            for event_id in rec.get("event_ids") or [rec.get("event_id")]:
                if event_id:  # every event the ranking covers
                    self.by_event[event_id].append(received_ms)
                    self.emitted.setdefault(event_id, rec.get("emitted_ts") or 0)

    def count_ranked(self, event_ids: list[str]) -> int:
        """How many of ``event_ids`` have at least one ranking."""
        return sum(1 for e in event_ids if self.by_event.get(e))

    def wait_ranked(self, event_ids: list[str], timeout_s: float,
                    idle_s: Optional[float] = None, on_tick=None,
                    job: Optional["JobProcess"] = None) -> int:
        """Wait until every event has a ranking, ``timeout_s`` at most, or ``idle_s`` without
        a new one; ``on_tick(n)`` sees the count as it grows. Returns the count."""
        deadline = time.monotonic() + timeout_s
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            if job is not None:
                job.check()
            n = self.count_ranked(event_ids)
            if on_tick is not None:
                on_tick(n)
            if n >= len(event_ids):
                return n
            if n != last:
                last, last_change = n, time.monotonic()
            elif idle_s is not None and time.monotonic() - last_change > idle_s:
                break
            time.sleep(0.2)
        return self.count_ranked(event_ids)

    def ranking(self, user_id: str) -> Optional[dict]:
        with self._lock:
            return self.latest.get(user_id)

    def latest_rankings(self) -> list[dict]:
        """A snapshot of every user's latest ranking (the reader thread keeps writing)."""
        with self._lock:
            return list(self.latest.values())

    def receive_times(self, prefix: str = "") -> dict[str, list[int]]:
        """A snapshot of event_id -> receive times, for event ids starting with ``prefix``."""
        with self._lock:
            return {e: list(t) for e, t in self.by_event.items() if e.startswith(prefix)}

    def rankings_covering(self, prefix: str) -> int:
        """How many ranking records cover at least one event whose id starts with
        ``prefix``."""
        with self._lock:
            return sum(1 for _, v, _ in self.records if v is not None and any(
                e.startswith(prefix) for e in json.loads(v).get("event_ids") or ()))

    def seen_events(self, prefix: str = "") -> int:
        with self._lock:
            return sum(1 for e in self.by_event if e.startswith(prefix))


def wait_for_catalog(producer, settings: Settings, rankings: RankingsReader, item_id: str,
                     n_items: int, job: Optional[JobProcess] = None,
                     timeout_s: float = 300.0) -> int:
    """Block until the running job's ranker knows ``n_items`` catalog items.

    Sends ``skip`` events of a probe user for ``item_id``, one at a time (the next once the
    previous one is ranked: an event for an item not in the catalog yet is held by the job
    until the item arrives), reads ``catalog_size`` from the probe's rankings, then erases the
    probe user with ``forget_user``. Returns the catalog size.
    """
    topic = settings.kafka.topics.events
    deadline = time.monotonic() + timeout_s
    n = 0
    size = -1

    def send_probe() -> str:
        nonlocal n
        n += 1
        ev = {"event_id": f"probe-{n}", "user_id": PROBE_USER, "item_id": item_id,
              "type": "skip", "ts": int(time.time() * 1000)}
        producer.send(topic, key=PROBE_USER.encode(), value=json.dumps(ev).encode())
        producer.flush()
        return ev["event_id"]

    outstanding = send_probe()
    while time.monotonic() < deadline:
        if job is not None:
            job.check()
        if rankings.by_event.get(outstanding):
            size = (rankings.ranking(PROBE_USER) or {}).get("catalog_size", -1)
            if size >= n_items:
                forget = {"type": "forget_user", "user_id": PROBE_USER}
                producer.send(topic, key=PROBE_USER.encode(), value=json.dumps(forget).encode())
                producer.flush()
                return size
            time.sleep(0.5)
            outstanding = send_probe()
        time.sleep(0.05)
    raise TimeoutError(f"the job's catalog has {size} of {n_items} items after {timeout_s:.0f}s")
