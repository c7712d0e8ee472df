"""Parsing raw Kafka records: items (an operator of their own) and events (inside the ranker);
anything invalid, or anything a parser did not expect, -> a dead letter (bounded)."""

from __future__ import annotations

from typing import Iterable

from pyflink.common import Row
from pyflink.datastream.functions import ProcessFunction, RuntimeContext

from operators.common import LoggedOpen, now_ms, source_ts
from operators.flink_metrics import OperatorMetrics
from operators.types import DLQ_TAG
from contracts.config import ValidationSettings
from contracts.messages import (Event, InvalidRecord, dlq_record, parse_event, parse_item,
                                 tombstone_item_id)


def _parse_guarded(parse, raw, validation: ValidationSettings, **limits):
    """``parse(raw)`` with the validation limits, or the :class:`InvalidRecord` to dead-letter
    (the parsers raise nothing else, whatever the record: ``messages._never_raises``)."""
    try:
        return parse(raw, now_ms=now_ms(), max_id_length=validation.max_id_length,
                     max_future_skew_ms=validation.max_future_skew_ms,
                     max_record_bytes=validation.max_record_bytes,
                     min_ts_ms=validation.min_ts_ms, **limits)
    except InvalidRecord as err:
        return err


def _source_dead_letter(err: InvalidRecord, row, validation: ValidationSettings) -> Row:
    """The DLQ row of a source record (bounded: ``validation.dlq_max_raw_bytes``)."""
    return Row(dlq_record(err, row["value"], row["topic"], row["partition"], row["offset"],
                          source_ts(row["ts"]), max_raw_bytes=validation.dlq_max_raw_bytes))


def event_records(element) -> Iterable:
    """The events-topic records an element of ``kafka_io.keyed_by_user`` carries: the record
    itself, or a batch's (``flink.event_batch_ms``: a row of per-field arrays, in the order
    read) as one mapping per record with the record's field names."""
    values = element["value"]
    if not isinstance(values, tuple):
        return (element,)
    topic, key = element["topic"], element["routed_by"]
    return [{"key": k, "value": v, "topic": topic, "partition": p, "offset": o, "ts": ts,
             "routed_by": key}
            for k, v, p, o, ts in zip(element["key"], values, element["partition"],
                                      element["offset"], element["ts"])]


class EventParser:
    """Raw ``events`` rows -> typed events, inside the keyed operator that uses them (the
    ranker, and the skeleton's stand-in): the topic is keyed by user in Java
    (``kafka_io.keyed_by_user``), so no Python operator of its own runs before the ranker.
    :meth:`parse` returns the :class:`Event`, or the dead letter to emit: an invalid record,
    or one whose ``user_id`` is not the key it was routed by (``user_id_mismatch``: the
    keying's JSON reader and the validating parser read it differently, e.g. a duplicate
    ``user_id``; its state must not be kept under another user's key).

    Its metric ``events_in_<type>`` is a batched counter (``OperatorMetrics.batched``: the
    ranker flushes it at each window); ``dlq_records`` goes at once."""

    def __init__(self, validation: ValidationSettings, metrics: OperatorMetrics):
        self.validation = validation
        self.metrics = metrics
        self._per_type: dict = {}  # event type -> its events_in_<type> counter

    def parse(self, row, key: str):
        ev = _parse_guarded(parse_event, row["value"], self.validation)
        if not isinstance(ev, InvalidRecord) and ev.user_id != key:
            ev = InvalidRecord("user_id_mismatch",
                               f"routed as user {key[:80]!r}, the record reads "
                               f"{ev.user_id[:80]!r}")
        if isinstance(ev, InvalidRecord):
            self.metrics.counter("dlq_records").inc()  # (rare: at once)
            return DLQ_TAG, _source_dead_letter(ev, row, self.validation)
        counter = self._per_type.get(ev.type)
        if counter is None:  # (once per type: no name built per event)
            counter = self._per_type[ev.type] = self.metrics.batched(f"events_in_{ev.type}")
        counter.inc()
        return Event(ev.user_id, ev.item_id, ev.type, ev.ts, ev.value, ev.event_id or "",
                     row["partition"], row["offset"])


class ParseItems(ProcessFunction, LoggedOpen):
    """Raw ``items`` records -> typed items; a null value with a key is a deletion
    (tombstone on the compacted topic); anything invalid -> DLQ side output."""

    def __init__(self, validation: ValidationSettings):
        self.validation = validation

    def open(self, ctx: RuntimeContext) -> None:
        self._log_open(ctx, "parse-items")
        self.metrics = OperatorMetrics(ctx)
        self.dlq = self.metrics.counter("dlq_records")
        self.items_in = self.metrics.counter("items_in")

    def process_element(self, row, ctx) -> Iterable:
        raw, key = row["value"], row["key"]
        if raw is None and key:
            try:
                item_id = tombstone_item_id(key, self.validation.max_id_length)
            except InvalidRecord:
                item_id = None  # not an item id: the null value goes to the DLQ below
            if item_id is not None:
                yield Row(item_id, "", "", True, source_ts(row["ts"]), row["partition"],
                          row["offset"], 0)
                return
        item = _parse_guarded(parse_item, raw, self.validation,
                              max_text_chars=self.validation.max_text_chars)
        if isinstance(item, InvalidRecord):
            self.dlq.inc()
            yield DLQ_TAG, _source_dead_letter(item, row, self.validation)
            return
        self.items_in.inc()
        yield Row(item.item_id, item.title, item.text(), item.deleted, item.ts,
                  row["partition"], row["offset"], item.published_ts)
