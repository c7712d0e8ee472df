"""The bench's plain loop: the hand-written alternative to the job, one Python process with
kafka-python, running the same per-event step with the same per-window coalescing
(:class:`recsys.user_step.LocalUsers`) and the item statistics inline."""

from __future__ import annotations

import time

from contracts.config import Settings


def _loop_catalog(settings: Settings) -> tuple:
    """The plain loop's catalog, read from the ``items`` topic until it is drained, embedded
    through the same cache as the job."""
    from kafka import KafkaConsumer

    from contracts.kafka_clients import python_client_kwargs
    from contracts.messages import InvalidRecord, parse_item
    from recsys.catalog import CatalogIndex
    from udfs.embedding import CachedEmbedder

    cat = CatalogIndex()
    embedder = CachedEmbedder.from_settings(settings.model)
    consumer = KafkaConsumer(settings.kafka.topics.items,
                             bootstrap_servers=settings.kafka.bootstrap_servers,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             group_id=None, consumer_timeout_ms=3000, max_poll_records=2000,
                             **python_client_kwargs(settings.kafka.properties, "consumer"))
    try:
        for msg in consumer:
            try:
                it = parse_item(msg.value, now_ms=int(time.time() * 1000))
            except InvalidRecord:
                continue
            if it.deleted:
                cat.delete(it.item_id)
            else:
                cat.upsert(it.item_id, it.title, embedder.embed([it.text()])[0],
                           it.published_ts)
    finally:
        consumer.close()
        embedder.close()
    return cat, embedder.model_id


def plain_loop(settings: Settings, n_events: int, out_topic: str,
               timeout_s: float = 3600) -> dict:
    """The hand-written alternative: consume, step and rank with the same model code and the
    same per-window coalescing (:class:`LocalUsers`), the item statistics inline, produce."""
    from kafka import KafkaConsumer, KafkaProducer

    from contracts.kafka_clients import python_client_kwargs
    from contracts.messages import InvalidRecord, parse_event, ranking_record
    from recsys import kernel
    from recsys.item_stats import InlineItemStats
    from recsys.params import ModelParams
    from recsys.user_step import Emit, LocalUsers, StepConfig

    kafka, p = settings.kafka, ModelParams.from_settings(settings.ranking)
    cat, model = _loop_catalog(settings)
    # The job's figures are taken after warm-up events; the loop's first product would
    # otherwise import torch in its timed part (~1.1 s of a ~2 s run in bf16).
    kernel.warm_up(cat, p.kernel_precision)
    stats = InlineItemStats(cat, p, settings.ranking.max_neighbours)
    users = LocalUsers(cat, p, StepConfig.from_settings(settings.ranking), model,
                       batch_users=settings.ranking.batch_max_users)
    window = settings.ranking.emit_window_ms
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, linger_ms=2, acks=1,
                             batch_size=64 * 1024,
                             **python_client_kwargs(kafka.properties, "producer"))
    consumer = KafkaConsumer(kafka.topics.events, bootstrap_servers=kafka.bootstrap_servers,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             group_id=None, max_poll_records=2000,
                             **python_client_kwargs(kafka.properties, "consumer"))

    def emit(outs: list) -> None:
        for user, out, items in outs:
            if isinstance(out, Emit):
                producer.send(out_topic, key=user.encode(), value=ranking_record(
                    user_id=user, items=items, k=p.k, model=model, event_ids=out.due.event_ids,
                    event_ts=out.due.ts, emitted_ts=int(time.time() * 1000),
                    catalog_size=len(cat)))

    done, t0 = 0, None
    deadline = time.monotonic() + timeout_s
    while done < n_events and time.monotonic() < deadline:
        for msgs in consumer.poll(timeout_ms=window or 500).values():
            t0 = t0 or time.perf_counter()
            for msg in msgs:
                now = int(time.time() * 1000)
                try:
                    ev = parse_event(msg.value, now_ms=now)
                except InvalidRecord:
                    continue
                emit(users.event(ev, now, stats=stats))
                done += not ev.user_id.startswith("__")
        emit(users.tick(int(time.time() * 1000)))
    emit(users.flush())
    producer.flush()
    seconds = time.perf_counter() - (t0 or time.perf_counter())
    consumer.close()
    producer.close()
    return {"events": done, "seconds": round(seconds, 2),
            "events_per_s": round(done / seconds, 1) if seconds else None}
