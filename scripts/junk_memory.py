"""Does junk grow the job's memory? Events for random ids that are not items, through the real
job (local broker, MiniCluster), with the memory of the job's process sampled as they flow.

    .venv/bin/python scripts/junk_memory.py --events 200000 --users 2000 --rounds 3

Loads a 60-item catalog, sends ``--events`` events whose item ids are all random and unknown,
from ``--users`` users (each holds at most ``ranking.max_pending`` of them; the rest go to the
DLQ), then one probe event for a catalog item: once the probe is ranked, every junk event
before it has been handled (one partition, in order); all of it ``--rounds`` times. Prints the
resident memory (RSS) of the process that runs the MiniCluster (JVM, Flink and the
thread-mode Python operators) as it goes, and a JSON summary with the RSS after each round:
memory that follows the junk grows round after round; bounded memory levels off.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contracts.config import default_settings  # noqa: E402
from streamrank.kafka_local import LocalBroker, create_topics  # noqa: E402
from streamrank.replay import make_producer, produce  # noqa: E402
from jobs.runtime import free_port  # noqa: E402
from streamrank.watch import JobProcess, RankingsReader, TopicReader, wait_for_catalog  # noqa: E402
from tests.conftest import isolated_settings  # noqa: E402
from tests.test_pipeline import catalog  # noqa: E402


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its children (the MiniCluster JVM is a child)."""
    import subprocess

    out = subprocess.run(["ps", "-o", "rss=", "--ppid", str(pid), "-p", str(pid)],
                         capture_output=True, text=True).stdout
    return sum(int(x) for x in out.split()) / 1024


def send_round(r: int, args, producer, topic: str, rng, proc, rankings, dlq, items,
               samples: list, t0: float) -> dict:
    """One round of junk events, then a probe event; waits until the probe is ranked (every
    junk event before it is handled), sampling the job's RSS."""
    start = last = time.monotonic()
    for i in range(args.events):
        user = f"junk-user-{rng.randrange(args.users)}"
        ev = {"event_id": f"j{r}-{i}", "user_id": user, "type": "click",
              "item_id": f"junk-{rng.getrandbits(64):016x}", "ts": int(time.time() * 1000)}
        producer.send(topic, key=user.encode(), value=json.dumps(ev).encode())
        if time.monotonic() - last >= args.every:
            last = time.monotonic()
            samples.append((round(last - t0, 1), i, rss_mib(proc.proc.pid)))
    probe = f"probe-{r}"
    producer.send(topic, key=b"probe", value=json.dumps(
        {"event_id": probe, "user_id": "probe", "item_id": items[0]["item_id"],
         "type": "click", "ts": int(time.time() * 1000)}).encode())
    producer.flush()
    while not rankings.by_event.get(probe):
        proc.check()
        time.sleep(args.every)
        samples.append((round(time.monotonic() - t0, 1), args.events, rss_mib(proc.proc.pid)))
        print(f"round {r + 1}: t={samples[-1][0]}s rss={samples[-1][2]:.0f} MiB "
              f"dlq={dlq.count()}", flush=True)
    return {"round": r + 1, "events_per_s": round(args.events / (time.monotonic() - start), 1),
            "rss_mib_end": round(samples[-1][2]), "dlq_so_far": dlq.count()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--every", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2,
                    help="send the junk this many times; memory must not grow per round")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="junk-memory-"))
    broker = LocalBroker(dataclasses.replace(default_settings().local_kafka, port=free_port(),
                                             controller_port=free_port(),
                                             data_dir=str(tmp / "kafka")))
    broker.up(wait_s=90)
    proc = None
    try:
        settings = isolated_settings(broker.bootstrap, tmp)
        create_topics(settings.kafka)
        proc = JobProcess(settings, tmp / "job.log").start()
        producer = make_producer(broker.bootstrap)
        rankings = RankingsReader(broker.bootstrap, settings.kafka.topics.rankings)
        dlq = TopicReader(broker.bootstrap, settings.kafka.topics.events_dlq)
        items = catalog()
        produce(producer, settings.kafka.topics.items, items, "item_id", progress=False)
        wait_for_catalog(producer, settings, rankings, items[-1]["item_id"], len(items),
                         job=proc, timeout_s=300)
        rng, t0 = random.Random(1), time.monotonic()
        samples = [(0.0, 0, rss_mib(proc.proc.pid))]
        rounds = [send_round(r, args, producer, settings.kafka.topics.events, rng, proc,
                             rankings, dlq, items, samples, t0) for r in range(args.rounds)]
        print(json.dumps({"events_per_round": args.events, "users": args.users,
                          "rss_mib_before": round(samples[0][2]), "rounds": rounds}))
        rankings.close()
        dlq.close()
        producer.close()
    finally:
        if proc is not None:
            proc.stop()
        broker.down()


if __name__ == "__main__":
    main()
