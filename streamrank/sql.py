"""``streamrank sql``: ask questions of the topics in Flink SQL.

Opens a PyFlink Table environment (batch mode: each query reads what the topics hold when it
starts, through the official Kafka SQL connector with ``scan.bounded.mode = latest-offset``,
and prints a final table), registers the topics as tables and ready-made views, and runs one
query. Rankings and dead letters are read with ``isolation.level = read_committed``.

Run it in a process of its own with one Python thread making PyFlink calls, as the CLI does:
the Table planner keeps per-thread state (Calcite's metadata providers, the context class
loader that holds the Kafka connector) on the Java thread that serves its py4j calls, and py4j
hands calls from a busy process to whichever of its threads is free.

Tables:  events, rankings, dlq (the events DLQ), items_dlq
Views:   events_per_minute, top_ranked_items, dlq_reasons, latency_per_minute
"""

from __future__ import annotations

import uuid

from contracts.config import Settings

VIEWS = {
    "events_per_minute": """
        SELECT DATE_FORMAT(kafka_ts, 'yyyy-MM-dd HH:mm') AS `minute`, `type`,
               COUNT(*) AS events
        FROM events
        WHERE `type` IS NOT NULL
        GROUP BY DATE_FORMAT(kafka_ts, 'yyyy-MM-dd HH:mm'), `type`""",
    "top_ranked_items": """
        SELECT t.item_id, COUNT(*) AS appearances, COUNT(DISTINCT r.user_id) AS users,
               ROUND(AVG(t.score), 4) AS avg_score
        FROM rankings AS r
        CROSS JOIN UNNEST(r.items) AS t (item_id, score, reason)
        GROUP BY t.item_id""",
    "dlq_reasons": """
        SELECT reason, COUNT(*) AS records, MIN(kafka_ts) AS first_seen,
               MAX(kafka_ts) AS last_seen
        FROM dlq
        GROUP BY reason""",
    # End to end through Kafka: the ranking's append time minus the append time of the latest
    # event it covers (event_id).
    "latency_per_minute": """
        SELECT DATE_FORMAT(e.kafka_ts, 'yyyy-MM-dd HH:mm') AS `minute`,
               COUNT(*) AS rankings,
               PERCENTILE(r.kafka_ms - e.kafka_ms, 0.5) AS p50_ms,
               PERCENTILE(r.kafka_ms - e.kafka_ms, 0.95) AS p95_ms,
               PERCENTILE(r.kafka_ms - e.kafka_ms, 0.99) AS p99_ms
        FROM rankings AS r
        JOIN events AS e ON r.event_id = e.event_id
        GROUP BY DATE_FORMAT(e.kafka_ts, 'yyyy-MM-dd HH:mm')""",
}


def _kafka_options(settings: Settings, topic: str) -> str:
    from jobs.kafka_io import sql_options
    from contracts.kafka_clients import connector_options

    return sql_options({
        "connector": "kafka",
        "topic": topic,
        "properties.bootstrap.servers": settings.kafka.bootstrap_servers,
        "properties.group.id": f"streamrank-sql-{uuid.uuid4().hex[:8]}",
        "properties.isolation.level": "read_committed",
        "scan.startup.mode": "earliest-offset",
        "scan.bounded.mode": "latest-offset",
        "format": "json",
        "json.ignore-parse-errors": "true",
        **connector_options(settings.kafka.properties),
    })


TABLES = {
    "events": ("events", """
        `event_id` STRING, `user_id` STRING, `item_id` STRING, `type` STRING,
        `value` DOUBLE, `ts` BIGINT"""),
    "rankings": ("rankings", """
        `user_id` STRING,
        `items` ARRAY<ROW<`item_id` STRING, `score` DOUBLE, `reason` STRING>>,
        `k` INT, `model` STRING, `event_id` STRING, `event_ids` ARRAY<STRING>,
        `event_ts` BIGINT, `emitted_ts` BIGINT, `catalog_size` INT"""),
    "dlq": ("events_dlq", """
        `reason` STRING, `error` STRING, `raw` STRING, `raw_encoding` STRING,
        `topic` STRING, `partition` INT, `offset` BIGINT, `ts` BIGINT"""),
    "items_dlq": ("items_dlq", """
        `reason` STRING, `error` STRING, `raw` STRING, `raw_encoding` STRING,
        `topic` STRING, `partition` INT, `offset` BIGINT, `ts` BIGINT"""),
}


def create_environment(settings: Settings):
    """A batch TableEnvironment with the Kafka connector, the tables and the views."""
    from pyflink.table import EnvironmentSettings, TableEnvironment

    from jobs.runtime import connector_jar, prepare_process_environment

    prepare_process_environment()
    t_env = TableEnvironment.create(EnvironmentSettings.in_batch_mode())
    conf = t_env.get_config()
    conf.set("pipeline.jars", connector_jar().as_uri())
    conf.set("parallelism.default", "1")
    conf.set("table.exec.resource.default-parallelism", "1")
    for table, (role, columns) in TABLES.items():
        topic = getattr(settings.kafka.topics, role)
        t_env.execute_sql(f"""
            CREATE TEMPORARY TABLE `{table}` ({columns},
              `kafka_ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
              `kafka_ms` AS EXTRACT(EPOCH FROM `kafka_ts`) * 1000
                            + EXTRACT(MILLISECOND FROM `kafka_ts`)
            ) WITH (
              {_kafka_options(settings, topic)}
            )""")
    for name, query in VIEWS.items():
        t_env.execute_sql(f"CREATE TEMPORARY VIEW `{name}` AS {query}")
    return t_env


def run_query(settings: Settings, query: str, max_rows: int = 0) -> list[tuple]:
    """Run ``query``; print it as a table and return its rows."""
    t_env = create_environment(settings)
    table = t_env.sql_query(query.strip().rstrip(";"))
    names = table.get_schema().get_field_names()
    rows = []
    with table.execute().collect() as results:
        for row in results:
            rows.append(tuple(row))
            if max_rows and len(rows) >= max_rows:
                break
    print(format_table(names, rows))
    return rows


def format_table(names: list[str], rows: list[tuple]) -> str:
    cells = [[("NULL" if v is None else str(v)) for v in r] for r in rows]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [line, "| " + " | ".join(n.ljust(w) for n, w in zip(names, widths)) + " |", line]
    for r in cells:
        out.append("| " + " | ".join(v.rjust(w) if _numeric(v) else v.ljust(w)
                                     for v, w in zip(r, widths)) + " |")
    out.append(line)
    out.append(f"{len(rows)} row{'s' if len(rows) != 1 else ''}")
    return "\n".join(out)


def _numeric(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False
