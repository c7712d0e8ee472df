"""The ``streamrank`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from streamrank.config import ConfigError, load_settings, parse_set_args

DEFAULT_DATA = os.environ.get("STREAMRANK_DATA", "../shared/data/ml-latest-small")


def _settings(args):
    return load_settings(args.config, parse_set_args(args.set))


def cmd_run(args) -> int:
    from jobs.ranking_job import run

    run(_settings(args))
    return 0


def cmd_kafka(args) -> int:
    from streamrank.kafka_local import LocalBroker, create_topics

    settings = _settings(args)
    broker = LocalBroker(settings.local_kafka)
    if args.action == "up":
        broker.up()
        created = create_topics(settings.kafka)
        print(f"kafka: up on {broker.bootstrap} (pid {broker.pid()}); "
              f"topics created: {', '.join(created) or 'none (all existed)'}")
    elif args.action == "down":
        print("kafka: stopped" if broker.down() else "kafka: was not running")
    elif args.action == "status":
        pid = broker.pid()
        state = "running" if pid and broker.answers() else ("starting" if pid else "stopped")
        print(f"kafka: {state}" + (f" (pid {pid}) on {broker.bootstrap}" if pid else ""))
        return 0 if state == "running" else 3
    elif args.action == "topics":
        created = create_topics(settings.kafka, recreate=args.recreate)
        print(f"topics created: {', '.join(created) or 'none (all existed)'}")
    return 0


def cmd_replay(args) -> int:
    from streamrank.replay import make_producer, produce, read_events, read_items

    settings = _settings(args)
    producer = make_producer(settings.kafka.bootstrap_servers)
    try:
        if not args.events_only:
            items = read_items(args.data)
            produce(producer, settings.kafka.topics.items, items, "item_id", desc="items")
        if not args.items_only:
            events = read_events(args.data, limit=args.limit)
            produce(producer, settings.kafka.topics.events, events, "user_id", rate=args.rate,
                    desc="events")
    finally:
        producer.close()
    return 0


def cmd_embed(args) -> int:
    from streamrank.replay import read_items
    from udfs.warmup import warm_cache

    settings = _settings(args)
    print(json.dumps(warm_cache(read_items(args.data), settings.model)))
    return 0


def cmd_demo(args) -> int:
    from streamrank.demo import run_demo

    result = run_demo(_settings(args), args.data, limit=args.limit or None, rate=args.rate,
                      keep_kafka=args.keep_kafka)
    print(f"demo: events={result['events']} rankings={result['rankings']} dlq={result['dlq']} "
          f"p50_ms={result['p50_ms']} p99_ms={result['p99_ms']}")
    ok = result["rankings"] == result["events"]
    return 0 if ok else 1


def cmd_eval(args) -> int:
    from streamrank.evaluate import run_eval

    result = run_eval(_settings(args), args.data, limit=args.limit or None, out_dir=args.out,
                      methods=tuple(args.methods.split(",")))
    print(f"eval: plot {result.pop('plot')}, json {result.pop('json')}", file=sys.stderr)
    print(json.dumps(result))
    return 0


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

    s = sub.add_parser("run", parents=[common], help="run the job in a local MiniCluster")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("kafka", parents=[common], help="the local single-node Kafka broker")
    s.add_argument("action", choices=["up", "down", "status", "topics"])
    s.add_argument("--recreate", action="store_true", help="with topics: delete and recreate")
    s.set_defaults(func=cmd_kafka)

    data_help = f"dataset dir in the MovieLens CSV layout (default {DEFAULT_DATA}; " \
                "env: STREAMRANK_DATA)"
    s = sub.add_parser("replay", parents=[common],
                       help="produce a MovieLens-layout dataset as items, then events")
    s.add_argument("--data", default=DEFAULT_DATA, help=data_help)
    s.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    s.add_argument("--limit", type=int, help="replay only the first N events (by time)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--items-only", action="store_true")
    g.add_argument("--events-only", action="store_true")
    s.set_defaults(func=cmd_replay)

    s = sub.add_parser("embed", parents=[common],
                       help="embed a dataset's catalog into the cache ahead of the job")
    s.add_argument("--data", default=DEFAULT_DATA, help=data_help)
    s.set_defaults(func=cmd_embed)

    s = sub.add_parser("eval", parents=[common],
                       help="prequential evaluation of streamrank against baselines")
    s.add_argument("--data", default=DEFAULT_DATA, help=data_help)
    s.add_argument("--limit", type=int, help="evaluate on the first N events only")
    s.add_argument("--out", default=".run/eval", help="where eval.json and eval.png go")
    s.add_argument("--methods", default="streamrank,popularity,embedding,cooc",
                   help="comma-separated subset of streamrank,popularity,embedding,cooc")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("demo", parents=[common],
                       help="everything end to end: Kafka, job, replay, live rankings")
    s.add_argument("--data", default=DEFAULT_DATA, help=data_help)
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
    return p


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
