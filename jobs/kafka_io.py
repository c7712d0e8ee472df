"""Kafka sources and sinks of the job, through the official Flink Kafka connector.

The connector's table factory is used (it builds the same ``KafkaSource``/``KafkaSink``) because
from Python it is the one way to get, with no Java code of our own:
  * the raw bytes of every record together with its topic/partition/offset (for dead letters),
  * a record key taken from one column and the value from another (rankings keyed by user),
  * null values written as tombstones (forget-user on the compacted rankings topic).
The tables are converted to/from DataStreams, so the topology itself is DataStream API.
"""

from __future__ import annotations

from pyflink.datastream import DataStream, KeyedStream
from pyflink.table import StreamTableEnvironment

from contracts.config import KafkaSettings
from contracts.kafka_clients import connector_options
from operators.types import TO_INTERACTIONS, TO_RANKINGS

# What a fetch of a source with a fetch wait waits for (see source_table).
FETCH_BATCH_BYTES = 65_536


def _quote(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def sql_options(options: dict) -> str:
    """The body of a ``WITH (...)`` clause."""
    return ",\n  ".join(f"{_quote(k)} = {_quote(v)}" for k, v in options.items())


def source_table(t_env: StreamTableEnvironment, kafka: KafkaSettings, topic: str,
                 table: str, fetch_wait_ms: int = 0) -> None:
    """Register ``table``: the rows ``(key, value, topic, partition, offset, ts)`` of
    ``topic``, key and value raw bytes (either may be null). ``fetch_wait_ms`` > 0: each fetch
    waits that long for 64 KiB of records (for a topic whose latency does not matter)."""
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


def source_stream(t_env: StreamTableEnvironment, kafka: KafkaSettings, topic: str,
                  table: str, fetch_wait_ms: int = 0) -> DataStream:
    """A DataStream of the rows of :func:`source_table`."""
    source_table(t_env, kafka, topic, table, fetch_wait_ms)
    return t_env.to_data_stream(t_env.from_path(table))


def keyed_source(t_env: StreamTableEnvironment, kafka: KafkaSettings, topic: str,
                 table: str, key_sql: str, fetch_wait_ms: int = 0,
                 with_ts: bool = False, batch_ms: int = 0) -> KeyedStream:
    """The rows ``(key, value, topic, partition, offset[, ts], routed_by)`` of
    :func:`source_table` keyed by ``key_sql`` (a SQL expression over its columns giving a
    non-null STRING; ``routed_by`` is its value), the keying done in Java. PyFlink's
    ``key_by`` calls a Python function per record, in the source's own thread: one more
    thread taking the interpreter's lock per record, which costs the job's Python operators,
    all serialised on that lock, more than the call itself. The same shape ``key_by``
    builds: (key, row) rows keyed on the first field by PyFlink's ``KeyByKeySelector``; a
    keyed Python operator is handed the row. ``with_ts``: with the record's timestamp (a
    conversion per record: only where dead letters need it).

    ``batch_ms`` > 0: a keyed Python operator is handed a batch instead, every record of
    one key within a tumbling processing-time window of ``batch_ms`` (Flink SQL's window
    aggregation, in Java): a row of the same fields, each an array over the batch's records
    in the order they were read, but ``topic`` (the one topic) and ``routed_by`` (the key);
    one Python call per key and window rather than per record
    (``operators.parse.event_records`` reads it). It adds up to ``batch_ms`` of latency.
    (One array per field: ``ARRAY_AGG`` of a ``ROW`` repeats one row, Flink 2.2 reusing the
    row object it aggregates.)"""
    from pyflink.common import Types
    from pyflink.java_gateway import get_gateway

    source_table(t_env, kafka, topic, table, fetch_wait_ms)
    raw = Types.PRIMITIVE_ARRAY(Types.BYTE())
    names = ["key", "value", "topic", "partition", "offset"] + (["ts"] if with_ts else []) \
        + ["routed_by"]
    types = [raw, raw, Types.STRING(), Types.INT(), Types.LONG()] + \
        ([Types.INSTANT()] if with_ts else []) + [Types.STRING()]
    fields = ", ".join(f"`{n}`" for n in names[:-1])
    keyed = f"SELECT {key_sql} AS k, * FROM `{table}`"
    if batch_ms > 0:
        view = f"{table}_keyed"
        t_env.create_temporary_view(view, t_env.sql_query(
            f"SELECT *, PROCTIME() AS pt FROM ({keyed})"))
        aggregates = ", ".join(f"MAX(`{n}`) AS `{n}`" if n == "topic" else
                               f"ARRAY_AGG(`{n}`) AS `{n}`" for n in names[:-1])
        query = (f"SELECT k, ROW({fields}, k) AS r FROM (SELECT k, {aggregates} FROM TABLE("
                 f"TUMBLE(TABLE `{view}`, DESCRIPTOR(pt), INTERVAL '{batch_ms / 1000:.3f}' "
                 "SECOND)) GROUP BY k, window_start, window_end)")
        types = [t if n in ("topic", "routed_by") else Types.OBJECT_ARRAY(t)
                 for n, t in zip(names, types)]
    else:
        query = f"SELECT k, ROW({fields}, k) AS r FROM ({keyed})"
    row_type = Types.ROW_NAMED(names, types)
    # (to_append_stream, not to_data_stream: PyFlink's keyed operators take a RowTypeInfo)
    with_key = t_env.to_append_stream(t_env.sql_query(query),
                                      Types.ROW([Types.STRING(), row_type]))
    selector = get_gateway().jvm.org.apache.flink.streaming.api.functions.python \
        .KeyByKeySelector()
    return KeyedStream(with_key._j_data_stream.keyBy(
        selector, Types.ROW([Types.STRING()]).get_java_type_info()), row_type, with_key)


def keyed_by_record_key(t_env: StreamTableEnvironment, kafka: KafkaSettings, topic: str,
                        table: str, fetch_wait_ms: int = 0) -> KeyedStream:
    """:func:`keyed_source` keyed by the record key decoded as UTF-8 (a null key as '')."""
    return keyed_source(t_env, kafka, topic, table, "COALESCE(CAST(`key` AS STRING), '')",
                        fetch_wait_ms)


def keyed_by_user(t_env: StreamTableEnvironment, kafka: KafkaSettings, topic: str,
                  table: str, batch_ms: int = 0) -> KeyedStream:
    """The events topic for the ranker, which parses each record itself: :func:`keyed_source`
    keyed by the ``user_id`` of the record's JSON value (Flink's ``JSON_VALUE``; '' when the
    value is null, not JSON or has no scalar ``user_id``), lone surrogates (``"\\ud800"``)
    taken out: the key reaches Python, whose strict UTF-16 decoding would fail the task on
    one (such a record is invalid anyway). The ranker dead-letters an event whose parsed
    ``user_id`` is not this key (a record the two readers read differently), so no state is
    ever kept under another user's key."""
    user = "COALESCE(JSON_VALUE(CAST(`value` AS STRING), '$.user_id'), '')"
    return keyed_source(t_env, kafka, topic, table,
                        f"REGEXP_REPLACE({user}, '[\\x{{D800}}-\\x{{DFFF}}]', '')",
                        with_ts=True, batch_ms=batch_ms)


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
