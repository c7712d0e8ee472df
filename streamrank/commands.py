"""What each ``streamrank`` subcommand does, given its parsed arguments (the parser and
``main`` are in ``streamrank/cli.py``). Each returns the process's exit status; heavy
imports happen inside, so that ``streamrank --help`` stays fast."""

from __future__ import annotations

import json
import os
import sys

from contracts.config import load_settings, parse_set_args


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
