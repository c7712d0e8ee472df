"""The ``streamrank`` command line: its parser and ``main`` (what each subcommand does is
in ``streamrank/commands.py``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from contracts.config import ConfigError
from streamrank.commands import (cmd_bench, cmd_chaos, cmd_cluster, cmd_demo, cmd_embed,
                                   cmd_eval, cmd_kafka, cmd_replay, cmd_run, cmd_sql)

DEFAULT_DATA = os.environ.get("STREAMRANK_DATA", "../shared/data/ml-latest-small")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=os.environ.get("STREAMRANK_CONFIG"),
                        help="YAML file merged over conf/streamrank.yaml "
                             "(env: STREAMRANK_CONFIG)")
    common.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override one setting, e.g. --set ranking.k=20 (repeatable); "
                             "env vars STREAMRANK_<SECTION>__<KEY> work too")

    p = argparse.ArgumentParser(
        prog="streamrank",
        description="Real-time personalized re-ranking with LLM embeddings on Apache Flink.")
    sub = p.add_subparsers(dest="command", required=True)
    _add_run(sub, common)
    _add_kafka(sub, common)
    _add_replay(sub, common)
    _add_embed(sub, common)
    _add_eval(sub, common)
    _add_demo(sub, common)
    _add_cluster(sub, common)
    _add_sql(sub, common)
    _add_bench(sub, common)
    _add_chaos(sub, common)
    return p


_DATA_HELP = (f"dataset dir in the MovieLens CSV layout (default {DEFAULT_DATA}; "
              "env: STREAMRANK_DATA)")


def _add_run(sub, common) -> None:
    s = sub.add_parser("run", parents=[common], help="run the job in a local MiniCluster")
    s.set_defaults(func=cmd_run)


def _add_kafka(sub, common) -> None:
    s = sub.add_parser("kafka", parents=[common], help="the local single-node Kafka broker")
    s.add_argument("action", choices=["up", "down", "status", "topics"])
    s.add_argument("--recreate", action="store_true", help="with topics: delete and recreate")
    s.set_defaults(func=cmd_kafka)


def _add_replay(sub, common) -> None:
    s = sub.add_parser("replay", parents=[common],
                       help="produce a MovieLens-layout dataset as items, then events")
    s.add_argument("--data", default=DEFAULT_DATA, help=_DATA_HELP)
    s.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    s.add_argument("--limit", type=int, help="replay only the first N events (by time)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--items-only", action="store_true")
    g.add_argument("--events-only", action="store_true")
    s.set_defaults(func=cmd_replay)


def _add_embed(sub, common) -> None:
    s = sub.add_parser("embed", parents=[common],
                       help="embed a dataset's catalog into the cache ahead of the job")
    s.add_argument("--data", default=DEFAULT_DATA, help=_DATA_HELP)
    s.set_defaults(func=cmd_embed)


def _add_eval(sub, common) -> None:
    s = sub.add_parser("eval", parents=[common],
                       help="prequential evaluation of streamrank against baselines")
    s.add_argument("--data", default=DEFAULT_DATA, help=_DATA_HELP)
    s.add_argument("--limit", type=int, help="evaluate on the first N events only")
    s.add_argument("--out", default=".run/eval", help="where eval.json and eval.png go")
    s.add_argument("--methods", help="comma-separated subset of the methods (default all: "
                   "streamrank, streamrank-no-content, popularity, embedding, cooc)")
    s.add_argument("--cold-items", type=int, default=5,
                   help="the cold-item slice: targets with fewer earlier interactions")
    s.set_defaults(func=cmd_eval)


def _add_demo(sub, common) -> None:
    s = sub.add_parser("demo", parents=[common],
                       help="everything end to end: Kafka, job, replay, live rankings")
    s.add_argument("--data", default=DEFAULT_DATA, help=_DATA_HELP)
    s.add_argument("--limit", type=int, default=_env_int("DEMO_LIMIT", 5000),
                   help="replay the first N events in time order; 0 = all (default 5000; "
                        "env: DEMO_LIMIT)")
    s.add_argument("--rate", type=float, default=float(os.environ.get("DEMO_RATE") or 50),
                   help="events per second; 0 = as fast as possible (default 50, below the "
                        "job's throughput on 2 cores, so latency shows processing rather "
                        "than queueing; env: DEMO_RATE)")
    s.add_argument("--keep-kafka", action="store_true",
                   help="leave the local broker running afterwards")
    s.set_defaults(func=cmd_demo)


def _add_cluster(sub, common) -> None:
    s = sub.add_parser("cluster", parents=[common],
                       help="a standalone Flink cluster on this machine (from the wheel)")
    s.add_argument("action", choices=["up", "submit", "status", "stop", "down"],
                   help="up: start JobManager + TaskManager(s); submit: run the job on it; "
                        "status: cluster, jobs and streamrank metrics; stop: stop the running "
                        "job with a savepoint; down: stop every process")
    s.add_argument("--savepoint", help="submit: start from this savepoint")
    s.add_argument("--parallelism", type=int, help="submit: job parallelism")
    s.add_argument("--savepoint-dir", default=".run/savepoints",
                   help="stop: where the savepoint goes (default .run/savepoints)")
    s.add_argument("--wait", type=float, default=180,
                   help="submit: seconds to wait for RUNNING (default 180)")
    s.set_defaults(func=cmd_cluster)


def _add_sql(sub, common) -> None:
    s = sub.add_parser("sql", parents=[common],
                       help="query the topics in Flink SQL (tables events, rankings, dlq, "
                            "items_dlq and ready-made views)")
    s.add_argument("query", nargs="?", help='e.g. "SELECT * FROM dlq_reasons"')
    s.add_argument("--file", help="read the query from this file")
    s.add_argument("--list", action="store_true", help="list tables and views (with their SQL)")
    s.add_argument("--max-rows", type=int, default=0, help="print at most N rows (0 = all)")
    s.set_defaults(func=cmd_sql)


def _add_bench(sub, common) -> None:
    s = sub.add_parser("bench", parents=[common],
                       help="throughput/latency of the job vs a plain consumer loop, embedding "
                            "speed")
    s.add_argument("--data", default=DEFAULT_DATA, help=_DATA_HELP)
    s.add_argument("--events", type=int, default=10000,
                   help="events for the throughput phase (default 10000)")
    s.add_argument("--warmup-events", type=int, default=3000,
                   help="events through the job (and the skeleton) before measuring, from "
                        "users of their own (default 3000; 0 measures a cold start)")
    s.add_argument("--latency-events", type=int, default=3000,
                   help="events for each fixed-rate latency phase (default 3000)")
    s.add_argument("--rate", type=float, default=2000,
                   help="the first latency phase's rate; the second runs at half of it "
                        "(default 2000/s)")
    s.add_argument("--parallelism", type=int, default=1,
                   help="job parallelism in the MiniCluster (default 1)")
    s.add_argument("--taskmanagers", type=int, default=0,
                   help="run the job on a standalone cluster of N one-slot TaskManagers at "
                        "parallelism N instead of the MiniCluster (each has its own Python "
                        "interpreter: this is how the job scales out)")
    s.add_argument("--embed-texts", type=int, default=512,
                   help="catalog texts for the embedding phase (default 512)")
    s.add_argument("--skip-embedding", action="store_true")
    s.add_argument("--scale-items", type=int, default=100_000,
                   help="rows of the MovieLens-derived catalog for the ranker's candidate + "
                        "ANN phase (default 100000; 0 skips it)")
    s.add_argument("--out", default=".run/bench", help="where bench.json and bench.png go")
    s.set_defaults(func=cmd_bench)


def _add_chaos(sub, common) -> None:
    s = sub.add_parser("chaos", parents=[common],
                       help="kill TaskManagers during a replay; check exactly-once rankings")
    s.add_argument("--data", default=DEFAULT_DATA, help=_DATA_HELP)
    s.add_argument("--limit", type=int, default=20000,
                   help="replay the first N events (default 20000; 0 = all)")
    s.add_argument("--kills", type=int, default=2, help="TaskManager SIGKILLs (default 2)")
    s.add_argument("--malformed", type=int, default=0,
                   help="malformed records mixed into the replay, of every poison kind "
                        "(default 0)")
    s.add_argument("--broker-restarts", type=int, default=0,
                   help="stop and start the local Kafka broker this many times mid-stream "
                        "(default 0)")
    s.add_argument("--parallelism", type=int, default=1)
    s.add_argument("--rate", type=float, default=0.0,
                   help="events per second (default 0: as fast as possible)")
    s.add_argument("--checkpoint-ms", type=int, default=2000,
                   help="checkpoint interval of the run (default 2000)")
    s.add_argument("--seed", type=int, help="random seed (kill points, malformed mix)")
    s.add_argument("--timeout", type=float, default=3600, help="give up after this many s")
    s.set_defaults(func=cmd_chaos)


def _env_int(name: str, default=None):
    value = os.environ.get(name)
    return int(value) if value else default


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    for noisy in ("kafka", "transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        sys.exit(args.func(args))
    except ConfigError as exc:
        print(f"streamrank: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
