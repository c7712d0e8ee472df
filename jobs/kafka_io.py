"""Kafka sources and sinks of the job, through the official Flink Kafka connector.

The connector's table factory is used (it builds the same ``KafkaSource``/``KafkaSink``) because
from Python it is the one way to get, with no Java code of our own:
  * the raw bytes of every record together with its topic/partition/offset (for dead letters),
  * a record key taken from one column and the value from another (rankings keyed by user),
  * null values written as tombstones (forget-user on the compacted rankings topic).
The tables are converted to/from DataStreams, so the topology itself is DataStream API.
"""

from __future__ import annotations

from pyflink.datastream import DataStream
from pyflink.table import StreamTableEnvironment

from contracts.config import KafkaSettings
from contracts.kafka_clients import connector_options
from operators.types import TO_INTERACTIONS, TO_RANKINGS

# What a fetch of a source with a fetch wait waits for (see source_stream).
FETCH_BATCH_BYTES = 65_536


def _quote(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def sql_options(options: dict) -> str:
    """The body of a ``WITH (...)`` clause."""
    return ",\n  ".join(f"{_quote(k)} = {_quote(v)}" for k, v in options.items())


def source_stream(t_env: StreamTableEnvironment, kafka: KafkaSettings, topic: str,
                  table: str, fetch_wait_ms: int = 0) -> DataStream:
    """A DataStream of rows ``(key, value, topic, partition, offset, ts)`` read from ``topic``;
    key and value are raw bytes (either may be null). ``fetch_wait_ms`` > 0: each fetch waits
    that long for 64 KiB of records (for a topic whose latency does not matter)."""
    options = {
        "connector": "kafka",
        "topic": topic,
        "properties.bootstrap.servers": kafka.bootstrap_servers,
        "properties.group.id": kafka.group_id,
        # Resume from the group's committed offsets; without any, start as configured.
        "scan.startup.mode": "group-offsets",
        "properties.auto.offset.reset": kafka.starting_offsets,
        # Never read what a transactional producer aborted (or has not committed yet).
        "properties.isolation.level": "read_committed",
        "key.format": "raw",
        "key.fields": "key",
        "value.format": "raw",
        "value.fields-include": "EXCEPT_KEY",
        **connector_options(kafka.properties),
    }
    if fetch_wait_ms > 0:
        options.update({"properties.fetch.min.bytes": str(FETCH_BATCH_BYTES),
                        "properties.fetch.max.wait.ms": str(fetch_wait_ms)})
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE `{table}` (
          `key` BYTES,
          `value` BYTES,
          `topic` STRING METADATA VIRTUAL,
          `partition` INT METADATA VIRTUAL,
          `offset` BIGINT METADATA VIRTUAL,
          `ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL
        ) WITH (
          {sql_options(options)}
        )""")
    return t_env.to_data_stream(t_env.from_path(table))


def _sink_options(kafka: KafkaSettings, topic: str, sink_name: str) -> dict:
    options = {
        "connector": "kafka",
        "topic": topic,
        "properties.bootstrap.servers": kafka.bootstrap_servers,
        "value.format": "raw",
        **connector_options(kafka.properties),
    }
    if kafka.delivery_guarantee == "exactly-once":
        options.update({
            "sink.delivery-guarantee": "exactly-once",
            "sink.transactional-id-prefix": f"{kafka.transactional_id_prefix}-{sink_name}",
            "properties.transaction.timeout.ms": str(kafka.transaction_timeout_ms),
        })
    else:
        options["sink.delivery-guarantee"] = "at-least-once"
    return options


def keyed_sink(t_env: StreamTableEnvironment, kafka: KafkaSettings, topic: str,
               table: str) -> str:
    """A sink table taking rows ``(k, v)``: ``k`` becomes the record key, ``v`` the value
    (null -> tombstone)."""
    options = _sink_options(kafka, topic, table)
    options.update({"key.format": "raw", "key.fields": "k",
                    "value.fields-include": "EXCEPT_KEY"})
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE `{table}` (`k` BYTES, `v` BYTES) WITH (
          {sql_options(options)}
        )""")
    return table


def insert_ranker_outputs(t_env: StreamTableEnvironment, statements, stream: DataStream,
                          kafka: KafkaSettings) -> None:
    """Add to ``statements`` the ranker's two outputs: the ``(k, v)`` of the rows of
    ``stream`` (``operators.types.ROUTED_RECORD_TYPE``) routed ``TO_RANKINGS`` into the
    rankings topic and those routed ``TO_INTERACTIONS`` into the interactions topic. The split
    is a Table filter: Java code, no Python call per record. The job and its skeleton both
    call it, so the skeleton keeps the job's sinks."""
    from pyflink.table.expressions import col

    table = t_env.from_data_stream(stream)
    topics = kafka.topics
    for route, sink in ((TO_RANKINGS, keyed_sink(t_env, kafka, topics.rankings,
                                                 "rankings_sink")),
                        (TO_INTERACTIONS, keyed_sink(t_env, kafka, topics.interactions,
                                                     "interactions_sink"))):
        statements.add_insert(sink, table.where(col("route") == route)
                              .select(col("k"), col("v")))


def value_sink(t_env: StreamTableEnvironment, kafka: KafkaSettings, topic: str,
               table: str) -> str:
    """A sink table taking rows ``(v)`` written as key-less records."""
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE `{table}` (`v` BYTES) WITH (
          {sql_options(_sink_options(kafka, topic, table))}
        )""")
    return table
