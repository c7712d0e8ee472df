"""The ranking job's skeleton: its shape without its model, the ceiling ``streamrank bench``
compares the job with.

The same Kafka source and sinks, the same keying (by user in Java for the ranker, which
parses each record with the ranker's ``EventParser``; by item for the item branch, which
reads the interactions topic the ranker writes)
and the same state accesses (one value read and written per event in each of the two keyed
Python operators), with a ranking record per event written to the rankings topic; no
catalog, no broadcast, no scoring. What the real job runs above this is the cost of its model.

Run by the bench: ``python -m jobs.skeleton_job --config FILE``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from contracts.config import Settings, load_settings, parse_set_args  # noqa: E402
from jobs import kafka_io  # noqa: E402
from jobs.ranking_job import check_topics, create_environment  # noqa: E402
from jobs.runtime import prepare_process_environment  # noqa: E402
from operators.skeleton import StateTouch  # noqa: E402
from operators.types import KEYED_RECORD_TYPE, ROUTED_RECORD_TYPE  # noqa: E402

def build_skeleton(env, t_env, settings: Settings) -> None:
    kafka, topics = settings.kafka, settings.kafka.topics
    rankings = (kafka_io.keyed_by_user(t_env, kafka, topics.events, "events_source",
                                       settings.flink.event_batch_ms)
                .process(StateTouch("ranking", settings.validation),
                         output_type=ROUTED_RECORD_TYPE)
                .name("rank-users"))
    # the interactions topic -> item branch (keyed by item); nothing comes back by broadcast
    (kafka_io.keyed_by_record_key(t_env, kafka, topics.interactions, "interactions_source",
                                  kafka.interactions_fetch_wait_ms)
     .process(StateTouch("none"), output_type=KEYED_RECORD_TYPE).name("item-branch"))
    statements = t_env.create_statement_set()
    kafka_io.insert_ranker_outputs(t_env, statements, rankings, kafka)
    statements.attach_as_datastream()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the streamrank job's skeleton.")
    parser.add_argument("--config", help="YAML file merged over conf/streamrank.yaml")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    settings = load_settings(args.config, parse_set_args(args.set))
    check_topics(settings)
    prepare_process_environment()
    env, t_env = create_environment(settings)
    build_skeleton(env, t_env, settings)
    env.execute("streamrank-skeleton")


if __name__ == "__main__":
    main()
