"""The streamrank topology: Kafka events + catalog -> per-user re-ranked top-k -> Kafka.

    items  -> parse -> embed (batched, cached) ----------------------------------.
           '-------------------------------------------------.               | broadcast
    events -> key_by(user) + batch, in Java -> parse + rank (keyed state) <--+  -> rankings
                                                |   '--(bad)--> events-dlq
                                                '-> interactions topic -> key_by(item)
                                                    -> item branch (statistics, co-occurrence)

Run it in a local MiniCluster with ``streamrank run``, or on a cluster with
``flink run -py jobs/ranking_job.py [--config FILE] [--set key=value ...]``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import zlib
from pathlib import Path

if __package__ in (None, ""):  # `flink run -py jobs/ranking_job.py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyflink.common import Configuration, Row, Types  # noqa: E402
from pyflink.datastream import StreamExecutionEnvironment  # noqa: E402
from pyflink.table import StreamTableEnvironment  # noqa: E402

from jobs import kafka_io  # noqa: E402
from operators.item_branch import ItemBranch  # noqa: E402
from operators.parse import ParseItems  # noqa: E402
from operators.rank_users import RankUsers  # noqa: E402
from operators.types import (  # noqa: E402
    CATALOG_STATE,
    CATALOG_UPDATE_TYPE,
    DEAD_LETTER_KIND,
    DLQ_TAG,
    ITEM_TYPE,
    NEIGHBOURS_STATE,
    POPULARITY_STATE,
    ROUTED_RECORD_TYPE,
    VALUE_RECORD_TYPE,
)
from contracts.config import Settings, load_settings, parse_set_args  # noqa: E402
from contracts.kafka_clients import masked  # noqa: E402
from jobs.runtime import flink_configuration, prepare_process_environment  # noqa: E402
from udfs.embed_items import EmbedItems  # noqa: E402
from udfs.embedding import model_id_for  # noqa: E402

log = logging.getLogger("streamrank.job")

# Catalog records are spread over this many embedding buckets per unit of parallelism; each
# bucket batches its own items.
EMBED_BUCKETS_PER_SUBTASK = 4


def create_environment(settings: Settings) -> tuple[StreamExecutionEnvironment,
                                                    StreamTableEnvironment]:
    conf = Configuration()
    for key, value in flink_configuration(settings).items():
        conf.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(settings.flink.parallelism)
    env.set_buffer_timeout(settings.flink.buffer_timeout_ms)
    env.enable_checkpointing(settings.flink.checkpoint_interval_ms)
    # Also through the API: a checkpoint timeout under backpressure must not fail the job over.
    env.get_checkpoint_config().set_tolerable_checkpoint_failure_number(
        settings.flink.tolerable_failed_checkpoints)
    return env, StreamTableEnvironment.create(env)


def catalog_streams(t_env: StreamTableEnvironment, settings: Settings):
    """The items topic, parsed; the embedded catalog updates; the items that could not be
    embedded, as dead letters."""
    kafka, topics = settings.kafka, settings.kafka.topics
    buckets = EMBED_BUCKETS_PER_SUBTASK * settings.flink.parallelism

    items = (
        kafka_io.source_stream(t_env, kafka, topics.items, "items_source")
        .process(ParseItems(settings.validation), output_type=ITEM_TYPE)
        .name("parse-items").uid("parse-items")
    )
    embedded = (
        items.key_by(lambda it: zlib.crc32(it["item_id"].encode("utf-8")) % buckets,
                     key_type=Types.INT())
        .process(EmbedItems(settings.model, topics.items,
                            settings.validation.dlq_max_raw_bytes),
                 output_type=CATALOG_UPDATE_TYPE)
        .name("embed-items").uid("embed-items")
    )
    # Items that could not be embedded come out as dead letters (see EmbedItems), split off
    # here in chains of their own: with a side output, or a Python operator chained to
    # embed-items, the first `import torch` in that task hangs in PyFlink 2.2's thread mode
    # (bisected on a MiniCluster; py-spy shows it stuck loading torch._C).
    catalog = embedded.filter(lambda u: u["kind"] != DEAD_LETTER_KIND).name("catalog") \
        .start_new_chain()
    embed_dlq = (embedded.filter(lambda u: u["kind"] == DEAD_LETTER_KIND).start_new_chain()
                 .map(lambda u: Row(u["vector"]), output_type=VALUE_RECORD_TYPE)
                 .name("embedding-dlq"))
    return items, catalog, embed_dlq


def build_pipeline(env: StreamExecutionEnvironment, t_env: StreamTableEnvironment,
                   settings: Settings) -> None:
    """Wire sources, operators and sinks into ``env`` (execution is the caller's)."""
    kafka, topics = settings.kafka, settings.kafka.topics
    model_id = model_id_for(settings.model.name_or_path, settings.model.precision)
    items, catalog, embed_dlq = catalog_streams(t_env, settings)
    # Events keyed by user in Java (the user_id of the JSON value) and gathered into per-user
    # batches of flink.event_batch_ms, parsed by the ranker.
    events = kafka_io.keyed_by_user(t_env, kafka, topics.events, "events_source",
                                    settings.flink.event_batch_ms)
    # The item branch: the interactions topic (each consumed item with the user's recent
    # items, written by the rankers below) and the catalog, keyed by item; it broadcasts the
    # statistics and co-occurrence counts of catalog items to the rankers. A topic closes
    # the loop because a DataStream cannot.
    interactions = kafka_io.keyed_by_record_key(t_env, kafka, topics.interactions,
                                                "interactions_source",
                                                kafka.interactions_fetch_wait_ms)
    item_stats = (
        interactions.connect(items.key_by(lambda it: it["item_id"], key_type=Types.STRING()))
        .process(ItemBranch(settings.ranking), output_type=CATALOG_UPDATE_TYPE)
        .name("item-branch").uid("item-branch")
    )
    catalog_broadcast = catalog.union(item_stats).broadcast(
        CATALOG_STATE, POPULARITY_STATE, NEIGHBOURS_STATE)
    rankings = (
        events.connect(catalog_broadcast)
        .process(RankUsers(settings.ranking, model_id, topics.events, settings.validation),
                 output_type=ROUTED_RECORD_TYPE)
        .name("rank-users").uid("rank-users")
    )
    write_outputs(t_env, settings, rankings, items, embed_dlq)


def write_outputs(t_env: StreamTableEnvironment, settings: Settings, rankings, items,
                  embed_dlq) -> None:
    """Rankings and interactions to their topics; dead letters of events (the ranker parses
    them) and of items (parsing, embedding) to theirs."""
    kafka, topics = settings.kafka, settings.kafka.topics
    statements = t_env.create_statement_set()
    kafka_io.insert_ranker_outputs(t_env, statements, rankings, kafka)
    # Dead letters: bad records, and held events the ranker could not apply.
    statements.add_insert(
        kafka_io.value_sink(t_env, kafka, topics.events_dlq, "events_dlq_sink"),
        t_env.from_data_stream(rankings.get_side_output(DLQ_TAG)))
    statements.add_insert(
        kafka_io.value_sink(t_env, kafka, topics.items_dlq, "items_dlq_sink"),
        t_env.from_data_stream(items.get_side_output(DLQ_TAG).union(embed_dlq)))
    statements.attach_as_datastream()


def check_topics(settings: Settings) -> None:
    """Fail at submission, naming them, when the job's topics do not exist (rather than at the
    first dead letter, in a restart loop)."""
    from jobs.topics import missing_topics
    from jobs.runtime import SetupError

    missing = missing_topics(settings.kafka)
    if missing:
        raise SetupError(f"Kafka topic(s) missing on {settings.kafka.bootstrap_servers}: "
                         f"{', '.join(missing)}; create them (`streamrank kafka topics`, "
                         f"replication kafka.replication_factor) or fix kafka.topics")


def run(settings: Settings, detached: bool = False):
    """Build and execute the job; blocks unless ``detached`` (then returns the JobClient)."""
    log.info("streamrank job: Kafka %s, topics %s, client properties %s",
             settings.kafka.bootstrap_servers, settings.kafka.topics,
             masked(settings.kafka.properties))
    check_topics(settings)
    prepare_process_environment()
    env, t_env = create_environment(settings)
    build_pipeline(env, t_env, settings)
    if detached:
        return env.execute_async("streamrank")
    return env.execute("streamrank")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the streamrank Flink job.")
    parser.add_argument("--config", help="YAML file merged over conf/streamrank.yaml")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override one setting, e.g. --set ranking.k=20 (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    run(load_settings(args.config, parse_set_args(args.set)))


if __name__ == "__main__":
    main()
