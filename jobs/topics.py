"""The job's Kafka topics: their names and configs, and which of them a cluster lacks (the job
checks at start). kafka-python only, no Flink."""

from __future__ import annotations

from contracts.config import KafkaSettings, Topics

COMPACTED = {"items", "rankings"}


def topic_specs(kafka: KafkaSettings) -> dict[str, dict[str, str]]:
    """Topic name -> topic configs, for every topic the job uses."""
    specs = {}
    for role in Topics.roles():
        name = getattr(kafka.topics, role)
        specs[name] = {"cleanup.policy": "compact"} if role in COMPACTED else {}
    return specs


def admin_client(kafka: KafkaSettings, **kwargs):
    from kafka import KafkaAdminClient

    from contracts.kafka_clients import python_client_kwargs

    return KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers,
                            **{**python_client_kwargs(kafka.properties, "admin"), **kwargs})


def missing_topics(kafka: KafkaSettings, timeout_ms: int = 15_000) -> list[str]:
    """The job's topics that do not exist on the cluster (a clear error at job start beats a
    job failing at its first dead letter). Raises ``SetupError`` when Kafka cannot be
    reached."""
    from kafka.errors import KafkaError

    from jobs.runtime import SetupError

    try:
        admin = admin_client(kafka, request_timeout_ms=timeout_ms)
    except (KafkaError, OSError, ValueError) as exc:
        raise SetupError(f"cannot reach Kafka at {kafka.bootstrap_servers} "
                         f"({type(exc).__name__}: {exc}); check kafka.bootstrap_servers and "
                         f"kafka.properties") from exc
    try:
        existing = set(admin.list_topics())
    finally:
        admin.close()
    return [t for t in topic_specs(kafka) if t not in existing]
