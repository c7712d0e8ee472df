"""The ``streamrank`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from contracts.config import ConfigError, load_settings, parse_set_args

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
    producer = make_producer(settings.kafka.bootstrap_servers, settings.kafka.properties)
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
    print(f"demo: events={result['events']} events_ranked={result['events_ranked']} "
          f"rankings={result['rankings']} dlq={result['dlq']} "
          f"p50_ms={result['p50_ms']} p99_ms={result['p99_ms']}")
    ok = result["events_ranked"] == result["events"]
    return 0 if ok else 1


def cmd_eval(args) -> int:
    from streamrank.evaluate import run_eval

    from streamrank.evaluate import METHODS, table

    methods = tuple(args.methods.split(",")) if args.methods else METHODS
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        print(f"eval: unknown method(s) {', '.join(unknown)}; choose from "
              f"{', '.join(METHODS)}", file=sys.stderr)
        return 2
    result = run_eval(_settings(args), args.data, limit=args.limit or None, out_dir=args.out,
                      methods=methods, cold_items=args.cold_items)
    print("HR@10 / NDCG@10 by slice:\n" + table(result), file=sys.stderr)
    print(f"eval: plot {result.pop('plot')}, json {result.pop('json')}", file=sys.stderr)
    print(json.dumps(result))
    return 0


def cmd_cluster(args) -> int:
    from streamrank.cluster import ClusterError, StandaloneCluster

    settings = _settings(args)
    cluster = StandaloneCluster(settings)
    try:
        if args.action == "up":
            cluster.up()
            ov = cluster.overview()
            print(f"cluster: up, {ov['taskmanagers']} TaskManager(s), {ov['slots-total']} slots; "
                  f"web UI and REST API on {cluster.rest}; logs in {cluster.log_dir}")
        elif args.action == "submit":
            job_id = cluster.submit(settings, savepoint=args.savepoint,
                                    parallelism=args.parallelism)
            cluster.wait_job_running(job_id, wait_s=args.wait)
            print(f"cluster: job {job_id} RUNNING; {cluster.rest}/#/job/running/{job_id}/overview")
        elif args.action == "status":
            if not cluster.answers():
                print(f"cluster: not running ({cluster.rest} does not answer)")
                return 3
            ov = cluster.overview()
            print(f"cluster: running on {cluster.rest}: {ov['taskmanagers']} TaskManager(s), "
                  f"{ov['slots-available']}/{ov['slots-total']} slots free")
            for job in cluster.jobs():
                line = f"  job {job.job_id} {job.name}: {job.state}"
                if job.state == "RUNNING":
                    by_operator: dict[str, list[str]] = {}
                    for key, v in sorted(cluster.operator_metrics(job.job_id).items()):
                        operator, name = key.split(".", 1)[0], key.rsplit(".", 1)[1]
                        by_operator.setdefault(operator, []).append(f"{name}={int(v)}")
                    for operator, values in by_operator.items():
                        line += f"\n    {operator}: " + " ".join(values)
                print(line)
        elif args.action == "stop":
            jobs = [j for j in cluster.jobs() if j.state == "RUNNING"]
            if not jobs:
                print("cluster: no running job")
                return 3
            for job in jobs:
                path = cluster.stop_with_savepoint(
                    job.job_id, os.path.abspath(args.savepoint_dir))
                print(f"cluster: job {job.job_id} stopped with savepoint {path}\n"
                      f"  resume: streamrank cluster submit --savepoint {path}")
        elif args.action == "down":
            pids = cluster.down()
            print(f"cluster: stopped {len(pids)} process(es)" if pids
                  else "cluster: was not running")
    except ClusterError as exc:
        print(f"streamrank cluster {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_sql(args) -> int:
    from streamrank.sql import TABLES, VIEWS, run_query

    if args.list:
        print("tables: " + ", ".join(TABLES) + "\nviews:  " + ", ".join(VIEWS))
        for name, query in VIEWS.items():
            print(f"\n-- {name}\n" + "\n".join(line[8:] if line.startswith(" " * 8) else line
                                               for line in query.strip("\n").splitlines()))
        return 0
    if args.file:
        with open(args.file) as f:
            query = f.read()
    elif args.query:
        query = args.query
    else:
        print("streamrank sql: give a query, --file FILE or --list", file=sys.stderr)
        return 2
    run_query(_settings(args), query, max_rows=args.max_rows)
    return 0


def cmd_bench(args) -> int:
    from streamrank.bench import run_bench

    result = run_bench(_settings(args), args.data, events=args.events,
                       latency_events=args.latency_events, rate=args.rate,
                       parallelism=args.parallelism, embed_texts=args.embed_texts,
                       out_dir=args.out, skip_embedding=args.skip_embedding,
                       scale_items=args.scale_items, taskmanagers=args.taskmanagers,
                       warmup_events=args.warmup_events)
    print(f"bench: plot {result.pop('plot')}, json {args.out}/bench.json", file=sys.stderr)
    print(json.dumps(result))
    return 0


def cmd_chaos(args) -> int:
    from streamrank.chaos import run_chaos

    report = run_chaos(_settings(args), args.data, limit=args.limit or None, kills=args.kills,
                       malformed=args.malformed, parallelism=args.parallelism, rate=args.rate,
                       checkpoint_ms=args.checkpoint_ms, seed=args.seed,
                       timeout_s=args.timeout, broker_restarts=args.broker_restarts)
    details = {"dlq_reasons": report.dlq_reasons, "lost_examples": report.lost_examples,
               "duplicate_examples": report.duplicate_examples,
               "mismatch_examples": report.mismatch_examples}
    print(f"chaos: {'PASS' if report.ok else 'FAIL'} {json.dumps(details)}", file=sys.stderr)
    print(json.dumps(report.summary()))
    return 0 if report.ok else 1


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
                   help="events for the fixed-rate latency phase (default 3000)")
    s.add_argument("--rate", type=float, default=2000, help="latency phase rate (default 2000/s)")
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
