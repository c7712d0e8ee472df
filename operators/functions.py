"""The Flink functions of the streamrank topology.

Each function opens its state and resources in ``open()`` (the object itself is pickled and
shipped to the workers), does one thing per element and delegates the math to the pure modules
``ranking``, ``user_state`` and ``catalog``.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
from pyflink.common import Row, Types
from pyflink.datastream import OutputTag
from pyflink.datastream.functions import (
    KeyedBroadcastProcessFunction,
    KeyedProcessFunction,
    ProcessFunction,
    RuntimeContext,
)
from pyflink.datastream.state import ListStateDescriptor, MapStateDescriptor, ValueStateDescriptor

from operators import recommender
from operators.catalog import CatalogIndex
from operators.flink_metrics import LatencyWindow, OperatorMetrics
from operators.item_stats import cooc_context, unpack_counts
from operators.recommender import ModelParams, Ranked
from operators.user_state import (Forgotten, PendingEvent, UserState, decode_profile,
                                  push_recent)
from streamrank.config import ModelSettings, RankingSettings, ValidationSettings
from streamrank.messages import (
    InvalidRecord,
    dlq_record,
    parse_event,
    parse_item,
    ranking_record,
)

log = logging.getLogger("streamrank.operators")

BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())

# ``partition``/``offset`` locate the source record, for dead letters raised downstream.
EVENT_TYPE = Types.ROW_NAMED(
    ["event_id", "user_id", "item_id", "type", "value", "ts", "partition", "offset"],
    [Types.STRING(), Types.STRING(), Types.STRING(), Types.STRING(), Types.DOUBLE(),
     Types.LONG(), Types.INT(), Types.LONG()],
)
ITEM_TYPE = Types.ROW_NAMED(
    ["item_id", "title", "text", "deleted", "ts", "partition", "offset"],
    [Types.STRING(), Types.STRING(), Types.STRING(), Types.BOOLEAN(), Types.LONG(),
     Types.INT(), Types.LONG()],
)
# What reaches the ranker by broadcast: an embedded item ("item"), a deletion ("delete"), an
# item's statistics ("pop": trending log-popularity and interaction count) or its half of the
# co-occurrence counts ("nbrs": ``pack_counts`` bytes, see CatalogIndex.set_cooccurrence).
# ``model`` is the embedding model of an "item" vector. Kind "dead-letter" (an item that could
# not be embedded; its DLQ record in ``vector``) never reaches the rankers: see
# ``dead_letters_of``.
CATALOG_UPDATE_TYPE = Types.ROW_NAMED(
    ["kind", "item_id", "title", "vector", "log_pop", "count", "neighbours", "model"],
    [Types.STRING(), Types.STRING(), Types.STRING(), BYTES, Types.DOUBLE(), Types.DOUBLE(),
     BYTES, Types.STRING()],
)
# Interactions from the user-history operator to the item branch: the event's item, type,
# weight and time, and the user's recent items before it (newline-joined; one record per event).
ITEM_EVENT_TYPE = Types.ROW_NAMED(
    ["item_id", "type", "weight", "ts", "context"],
    [Types.STRING(), Types.STRING(), Types.DOUBLE(), Types.LONG(), Types.STRING()])
KEYED_RECORD_TYPE = Types.ROW_NAMED(["k", "v"], [BYTES, BYTES])
VALUE_RECORD_TYPE = Types.ROW_NAMED(["v"], [BYTES])

DLQ_TAG = OutputTag("dlq", VALUE_RECORD_TYPE)
DEAD_LETTER_KIND = "dead-letter"

# State holding raw bytes is declared PICKLED_BYTE_ARRAY: in thread mode PyFlink 2.2 converts a
# PRIMITIVE_ARRAY(BYTE) state value element by element into a tuple of ints (and fails on an
# empty value), while pickling a ``bytes`` object is a single copy. The bytes themselves are
# our compact layouts (float32 vectors), never pickled Python objects.
STATE_BYTES = Types.PICKLED_BYTE_ARRAY()
CATALOG_STATE = MapStateDescriptor("catalog", Types.STRING(), STATE_BYTES)
POPULARITY_STATE = MapStateDescriptor("item-stats", Types.STRING(), STATE_BYTES)
# Each item's half of the co-occurrence counts (``pack_counts``). Not "neighbours", the name of
# the full lists before the counts were halved: a savepoint from then restores without them
# (they would count every pair twice); counting starts again from the next events.
NEIGHBOURS_STATE = MapStateDescriptor("cooc-halves", Types.STRING(), STATE_BYTES)
# During a model swap: the new model's vectors so far, and which model is which.
STAGING_STATE = MapStateDescriptor("catalog-staging", Types.STRING(), STATE_BYTES)
MODELS_STATE = MapStateDescriptor("models", Types.STRING(), Types.STRING())


def python_runtime_mode() -> str:
    """``thread`` when this Python code runs embedded in the JVM (PEMJA), else ``process``.

    Flink falls back to process mode silently where thread mode is unsupported, so operators
    log what really ran.
    """
    try:
        exe = os.path.basename(os.readlink("/proc/self/exe"))
    except OSError:
        return "unknown"
    return "thread" if exe.startswith("java") else "process"


def now_ms() -> int:
    return int(time.time() * 1000)


def _source_ts(value) -> int:
    """Kafka record timestamp from the source row (an Instant/datetime or epoch ms)."""
    if value is None:
        return 0
    if isinstance(value, (int, float)):
        return int(value)
    try:
        return int(value.timestamp() * 1000)
    except AttributeError:
        return 0


class LoggedOpen:
    def _log_open(self, ctx: RuntimeContext, what: str) -> None:
        # Thread mode's RuntimeContext lacks some getters (PyFlink 2.2), so ask defensively.
        try:
            subtask = ctx.get_task_name_with_subtasks()
        except AttributeError:
            subtask = what
        log.info("%s running in python %s mode (pid %d)", subtask, python_runtime_mode(),
                 os.getpid())


def _parse_guarded(parse, raw, validation: ValidationSettings, **limits):
    """``parse(raw)`` with the validation limits, or the :class:`InvalidRecord` to dead-letter:
    nothing a record holds can raise out of a parse operator (the parsers guard themselves;
    this is the operator's own last line)."""
    try:
        return parse(raw, now_ms=now_ms(), max_id_length=validation.max_id_length,
                     max_future_skew_ms=validation.max_future_skew_ms,
                     max_record_bytes=validation.max_record_bytes,
                     min_ts_ms=validation.min_ts_ms, **limits)
    except InvalidRecord as err:
        return err
    except Exception as exc:  # noqa: BLE001 - a record must never fail the operator
        return InvalidRecord("parser_error", f"{type(exc).__name__}: {exc}"[:300])


def _source_dead_letter(err: InvalidRecord, row, validation: ValidationSettings) -> Row:
    """The DLQ row of a source record (bounded: ``validation.dlq_max_raw_bytes``)."""
    return Row(dlq_record(err, row["value"], row["topic"], row["partition"], row["offset"],
                          _source_ts(row["ts"]), max_raw_bytes=validation.dlq_max_raw_bytes))


class ParseEvents(ProcessFunction, LoggedOpen):
    """Raw ``events`` records -> typed events; anything invalid -> DLQ side output."""

    def __init__(self, validation: ValidationSettings):
        self.validation = validation

    def open(self, ctx: RuntimeContext) -> None:
        self._log_open(ctx, "parse-events")
        self.metrics = OperatorMetrics(ctx)
        self.dlq = self.metrics.counter("dlq_records")

    def process_element(self, row, ctx) -> Iterable:
        ev = _parse_guarded(parse_event, row["value"], self.validation)
        if isinstance(ev, InvalidRecord):
            self.dlq.inc()
            yield DLQ_TAG, _source_dead_letter(ev, row, self.validation)
            return
        self.metrics.counter(f"events_in_{ev.type}").inc()
        yield Row(ev.event_id, ev.user_id, ev.item_id, ev.type, ev.value, ev.ts,
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
                item_id = bytes(key).decode("utf-8")
            except UnicodeDecodeError:
                item_id = ""
            if item_id.strip() and not isinstance(
                    _parse_guarded(parse_item, json.dumps({"item_id": item_id, "deleted": True})
                                   .encode("utf-8", "surrogatepass"), self.validation),
                    InvalidRecord):
                yield Row(item_id, "", "", True, _source_ts(row["ts"]), row["partition"],
                          row["offset"])
                return
        item = _parse_guarded(parse_item, raw, self.validation,
                              max_text_chars=self.validation.max_text_chars)
        if isinstance(item, InvalidRecord):
            self.dlq.inc()
            yield DLQ_TAG, _source_dead_letter(item, row, self.validation)
            return
        self.items_in.inc()
        yield Row(item.item_id, item.title, item.text(), item.deleted, item.ts,
                  row["partition"], row["offset"])


class EmbedItems(KeyedProcessFunction, LoggedOpen):
    """Items (keyed by embedding bucket) -> catalog updates carrying the item's embedding.

    The model is loaded in ``open()`` (retried; a clear error if it cannot be). Cache hits
    pass straight through. Misses are buffered in keyed state (so a checkpoint never loses
    them) and embedded together when ``batch_size`` are waiting or ``batch_timeout_ms`` after
    the first, whichever comes first. Order per key is kept: once something is buffered,
    later items queue behind it. A text the model fails on, or whose vector has the wrong
    shape or non-finite values, goes to the items DLQ (``embedding_failed``/``bad_vector``)
    and never reaches the catalog; the job keeps running.

    Live model swap: each bucket keeps its items' texts and the model that embedded them. A
    recurring timer (``reembed_interval_ms``, kept in checkpoints and savepoints) notices when
    the job was restarted with another model and re-embeds the bucket's items in the
    background, ``batch_size`` per tick; the rankers keep ranking with the old vectors until
    the new model's catalog is complete.
    """

    def __init__(self, model: ModelSettings, items_topic: str = "items",
                 dlq_max_raw_bytes: int = 65_536):
        self.model = model
        self.items_topic = items_topic
        self.dlq_max_raw_bytes = dlq_max_raw_bytes

    def open(self, ctx: RuntimeContext) -> None:
        from udfs.embedding import CachedEmbedder

        self._log_open(ctx, "embed-items")
        # Loaded now, retried; when it cannot be, the task fails with a clear error and
        # Flink's restart strategy tries again.
        self.embedder = CachedEmbedder.from_settings(self.model)
        self.embedder.check_configuration()
        self.embedder.load()
        self.model_id = self.embedder.model_id
        self.buffer = ctx.get_list_state(ListStateDescriptor("pending-items", ITEM_TYPE))
        self.count = ctx.get_state(ValueStateDescriptor("pending-count", Types.INT()))
        self.texts = ctx.get_map_state(
            MapStateDescriptor("item-texts", Types.STRING(), Types.STRING()))
        self.bucket_model = ctx.get_state(ValueStateDescriptor("bucket-model", Types.STRING()))
        self.reembed = ctx.get_state(ValueStateDescriptor("reembed-ids", Types.STRING()))
        self.tick = ctx.get_state(ValueStateDescriptor("reembed-tick", Types.LONG()))
        m = OperatorMetrics(ctx)
        self.g_hit_pct = m.value("cache_hit_pct")
        self.g_embedded = m.value("embedded_texts")
        self.g_hits = m.value("cache_hits")
        self.batch_ms = LatencyWindow(m, "embed_batch_ms", size=256, every=1)
        self.reembedded = m.counter("reembedded_items")
        self.failed = m.counter("embedding_dlq")

    def close(self) -> None:
        embedder = getattr(self, "embedder", None)
        if embedder is not None:
            s = embedder.stats
            log.info("embed-items closing: %d cache hits, %d embedded in %.1fs", s.hits,
                     s.misses, s.embed_seconds)
            embedder.close()

    def _report(self) -> None:
        stats = self.embedder.stats
        total = stats.hits + stats.misses
        self.g_hit_pct.set(100 * stats.hits / total if total else 0)
        self.g_embedded.set(stats.misses)
        self.g_hits.set(stats.hits)

    def _update(self, item_id: str, title: str, deleted: bool, vector) -> Row:
        if deleted:
            return Row("delete", item_id, "", None, None, None, None, None)
        return Row("item", item_id, title, np.asarray(vector, np.float32).tobytes(),
                   None, None, None, self.model_id)

    def _dead_letter(self, item_id: str, title: str, text: str, reason: str,
                     partition: int = -1, offset: int = -1):
        """An item whose text could not be embedded: to the items DLQ, never the catalog."""
        self.failed.inc()
        code, _, detail = reason.partition(": ")
        raw = json.dumps({"item_id": item_id, "title": title, "text": text},
                         ensure_ascii=False).encode("utf-8", "backslashreplace")
        letter = dlq_record(InvalidRecord(code, detail), raw, self.items_topic,
                            -1 if partition is None else partition,
                            -1 if offset is None else offset, now_ms(),
                            max_raw_bytes=self.dlq_max_raw_bytes)
        # On the main output, not a side output: see jobs/ranking_job.py.
        return Row(DEAD_LETTER_KIND, item_id, "", letter, None, None, None, None)

    def _embedded(self, items: list) -> Iterable:
        """Catalog updates for ``items`` (``(item_id, title, text, partition, offset)``), with
        a dead letter for each text that could not be embedded."""
        if not items:
            return
        t0 = time.perf_counter()
        results = self.embedder.embed_each([text for _, _, text, _, _ in items])
        self.batch_ms.update((time.perf_counter() - t0) * 1000)
        self._report()
        for (item_id, title, text, partition, offset), (vec, reason) in zip(items, results):
            if vec is None:
                yield self._dead_letter(item_id, title, text, reason, partition, offset)
            else:
                yield self._update(item_id, title, False, vec)

    def _arm_tick(self, ctx) -> None:
        due = ctx.timer_service().current_processing_time() + self.model.reembed_interval_ms
        ctx.timer_service().register_processing_time_timer(due)
        self.tick.update(due)

    def process_element(self, item, ctx) -> Iterable:
        item_id = item["item_id"]
        if item["deleted"]:
            self.texts.remove(item_id)
        else:
            self.texts.put(item_id, json.dumps([item["title"], item["text"]]))
        bucket_model = self.bucket_model.value()
        if bucket_model is None:  # the bucket's first item: it starts ticking
            self.bucket_model.update(self.model_id)
            self._arm_tick(ctx)
        elif bucket_model != self.model_id:  # a swap is running: embed this one right here
            pending = self.reembed.value()
            ids = json.loads(pending) if pending else []
            if item_id in ids:
                ids.remove(item_id)
                self.reembed.update(json.dumps(ids))
        count = self.count.value() or 0
        if count == 0:
            if item["deleted"]:
                yield self._update(item_id, "", True, None)
                return
            vec = self.embedder.lookup(item["text"])
            if vec is not None:
                self._report()
                yield self._update(item_id, item["title"], False, vec)
                return
            ctx.timer_service().register_processing_time_timer(
                ctx.timer_service().current_processing_time() + self.model.batch_timeout_ms)
        self.buffer.add(item)
        count += 1
        if count >= self.model.batch_size:
            yield from self._flush()
        else:
            self.count.update(count)

    def on_timer(self, timestamp: int, ctx) -> Iterable:
        if self.count.value():
            yield from self._flush()
        due = self.tick.value()
        if due is not None and timestamp >= due:
            yield from self._reembed_step()
            self._arm_tick(ctx)

    def _reembed_step(self) -> Iterable:
        """One background step of a model swap for this bucket (nothing when up to date)."""
        if self.bucket_model.value() == self.model_id:
            return
        pending = self.reembed.value()
        ids = json.loads(pending) if pending else None
        if ids is None:  # the swap starts
            ids = list(self.texts.keys())
            log.info("embed-items: re-embedding %d items of a bucket for model %s (was %s)",
                     len(ids), self.model_id, self.bucket_model.value())
        chunk, rest = ids[: self.model.batch_size], ids[self.model.batch_size:]
        entries = [(i, self.texts.get(i)) for i in chunk]
        entries = [(i, *json.loads(e), -1, -1) for i, e in entries if e is not None]
        for out in self._embedded(entries):
            if out[0] != DEAD_LETTER_KIND:
                self.reembedded.inc()
            yield out
        if rest:
            self.reembed.update(json.dumps(rest))
        else:
            self.reembed.clear()
            self.bucket_model.update(self.model_id)
            log.info("embed-items: bucket re-embedded for model %s", self.model_id)

    def _flush(self) -> Iterable:
        items = list(self.buffer.get() or [])
        self.buffer.clear()
        self.count.clear()
        live = iter(self._embedded([
            (it["item_id"], it["title"], it["text"], it["partition"], it["offset"])
            for it in items if not it["deleted"]]))
        for it in items:  # in arrival order: a deletion after an upsert stays after it
            yield self._update(it["item_id"], "", True, None) if it["deleted"] else next(live)


class UserHistory(KeyedProcessFunction, LoggedOpen):
    """Events keyed by user -> the interaction for the item branch, with the user's recent
    items (its co-occurrence context).

    Keeps the same recent-items list as the ranker (``ranking.history_size``) so the
    collaborative signal needs no cycle back from the ranker.
    """

    def __init__(self, ranking_cfg: RankingSettings):
        self.cfg = ranking_cfg

    def open(self, ctx: RuntimeContext) -> None:
        self._log_open(ctx, "user-history")
        self.p = ModelParams.from_settings(self.cfg)
        descriptor = ValueStateDescriptor("recent", Types.STRING())
        if self.cfg.user_ttl_hours > 0:
            descriptor.enable_time_to_live(user_ttl(self.cfg.user_ttl_hours))
        self.history = ctx.get_state(descriptor)

    def process_element(self, ev, ctx) -> Iterable:
        raw = self.history.value()
        forgot_ts = -1
        if raw and raw.startswith("{"):  # the user was forgotten (see RankUsers._forget)
            forgot_ts = json.loads(raw)["ts"]
            if ev["type"] != "forget_user" and ev["ts"] <= forgot_ts:
                return  # the ranker dead-letters it
            raw = None
        if ev["type"] == "forget_user":
            memory_ms = int(self.cfg.forget_memory_hours * 3_600_000)
            if memory_ms > 0:
                expires = ctx.timer_service().current_processing_time() + memory_ms
                self.history.update(json.dumps({"ts": max(ev["ts"], forgot_ts),
                                                "expires": expires}))
                ctx.timer_service().register_processing_time_timer(expires)
            else:
                self.history.clear()
            return
        recent = json.loads(raw) if raw else []
        w = self.p.weight(ev["type"], ev["value"])
        if self.p.counts_as_consumption(ev["type"], w):
            # One record per event: the item's statistics, and its pairs with the user's
            # recent items, counted under this item only.
            yield Row(ev["item_id"], ev["type"], w, ev["ts"],
                      "\n".join(cooc_context(recent, ev["item_id"])))
        push_recent(recent, ev["item_id"], self.p.history_size)
        self.history.update(json.dumps(recent))

    def on_timer(self, timestamp: int, ctx) -> Iterable:
        raw = self.history.value()
        if raw and raw.startswith("{") and timestamp >= json.loads(raw)["expires"]:
            self.history.clear()
        return ()


_TITLE_LEN = struct.Struct("<I")
_STATS = struct.Struct("<dd")


def pack_catalog_entry(title: str, vector: bytes) -> bytes:
    t = title.encode("utf-8")
    return _TITLE_LEN.pack(len(t)) + t + bytes(vector)


def unpack_catalog_entry(data: bytes) -> tuple[str, np.ndarray]:
    (n,) = _TITLE_LEN.unpack_from(data, 0)
    title = bytes(data[4:4 + n]).decode("utf-8")
    return title, np.frombuffer(bytes(data[4 + n:]), dtype=np.float32)


@dataclass
class _Queued:
    """A user whose due ranking waits for the end of its batch window."""

    state: UserState  # the user's state after the event (as written to keyed state)
    t0: float  # when the event reached the ranker (perf_counter)
    ranked: Optional[Ranked] = None  # set once the window is ranked


class RankUsers(KeyedBroadcastProcessFunction, LoggedOpen):
    """Per user: learn from and apply the event, emit the re-ranked top-k.

    The catalog (embeddings, deletions), item statistics and co-occurrence neighbours arrive
    by broadcast and are mirrored in broadcast state for checkpoints, and in a
    :class:`CatalogIndex` for scoring. The model itself is :mod:`operators.recommender`, the
    same code ``streamrank eval`` measures.

    Every valid event yields exactly one ranking, under its own ``event_id``. An event whose
    item is not in the catalog yet is held in the user's state and applied, and ranked, once
    the item is known: a processing-time timer checks every ``pending_retry_ms`` (and the
    user's next event checks too). What cannot be held (``max_pending``) or waits longer than
    ``pending_timeout_ms`` goes to the DLQ side output.

    Micro-batching (``batch_window_ms`` > 0): an event is applied to the user's state at once
    and its ranking marked ``due`` there; a processing-time timer at the end of the window
    fires once per user, and the first of those timers ranks every user queued in the window
    together (:func:`recommender.rank_batch`); each user's timer then emits that user's
    ranking and stores what was shown, in the user's own key context. A user whose next
    event (or pending-retry timer) comes first gets the due ranking emitted right then, so
    each event is ranked on the state right after it, as without batching. After a restore
    the in-memory window is gone, but the ``due`` mark and the timer are in the checkpoint:
    the timer ranks that user alone.
    """

    def __init__(self, ranking_cfg: RankingSettings, model_id: str, events_topic: str,
                 dlq_max_raw_bytes: int = 65_536):
        self.cfg = ranking_cfg
        self.model_id = model_id
        self.events_topic = events_topic
        self.dlq_max_raw_bytes = dlq_max_raw_bytes

    def open(self, ctx: RuntimeContext) -> None:
        self._log_open(ctx, "rank-users")
        self.p = ModelParams.from_settings(self.cfg)
        descriptor = ValueStateDescriptor("profile", STATE_BYTES)
        if self.cfg.user_ttl_hours > 0:
            descriptor.enable_time_to_live(user_ttl(self.cfg.user_ttl_hours))
        self.profile = ctx.get_state(descriptor)
        self.catalog = CatalogIndex()  # the active model's catalog: what rankings use
        self.active_model: str | None = None
        self.staging: CatalogIndex | None = None  # a new model's catalog while it fills up
        self.staging_model: str | None = None
        self.missing: set[str] = set()  # active items the staging catalog still lacks
        self.catalog_loaded = False
        m = self.metrics = OperatorMetrics(ctx)
        self.rankings_out = m.counter("rankings_out")
        self.tombstones_out = m.counter("tombstones_out")
        self.new_users = m.counter("users_new")
        self.pending_in = m.counter("pending_held")
        self.pending_applied = m.counter("pending_applied")
        self.pending_dlq = m.counter("pending_dlq")
        self.pending_now = 0
        self.g_pending = m.value("pending_events")
        self.g_catalog = m.value("catalog_items")
        self.g_missing = m.value("swap_items_missing")
        # Time from the event reaching the ranker to its ranking (state, scoring, encoding,
        # and the wait for the end of its batch window).
        self.latency = LatencyWindow(m, "ranking_us", scale=1000)
        self.batch_sizes = m.counter("batched_rankings")
        self.batches = m.counter("ranking_batches")
        # Micro-batches: window end -> {user_id: _Queued}, and the users of windows already
        # ranked whose own timer has not emitted yet.
        self._windows: dict[int, dict[str, _Queued]] = {}
        self._queued_at: dict[str, int] = {}
        self._ranked: dict[str, _Queued] = {}

    def _ensure_catalog(self, ctx) -> None:
        """After a restore the broadcast state holds the catalog(s); rebuild the indexes once."""
        if self.catalog_loaded:
            return
        self.catalog_loaded = True
        models = ctx.get_broadcast_state(MODELS_STATE)
        self.active_model = models.get("active")
        self.staging_model = models.get("staging")
        n = 0
        for item_id, packed in ctx.get_broadcast_state(CATALOG_STATE).items():
            title, vec = unpack_catalog_entry(packed)
            self.catalog.upsert(item_id, title, vec)
            n += 1
        if self.staging_model:
            self._start_staging(self.staging_model)
            for item_id, packed in ctx.get_broadcast_state(STAGING_STATE).items():
                title, vec = unpack_catalog_entry(packed)
                self.staging.upsert(item_id, title, vec)
                self.missing.discard(item_id)
        for item_id, packed in ctx.get_broadcast_state(POPULARITY_STATE).items():
            for cat in self._catalogs():
                cat.set_popularity(item_id, *_STATS.unpack(packed))
        for item_id, encoded in ctx.get_broadcast_state(NEIGHBOURS_STATE).items():
            for cat in self._catalogs():
                cat.set_cooccurrence(item_id, unpack_counts(encoded),
                                     max_neighbours=self.cfg.max_neighbours)
        if n:
            log.info("rank-users restored a catalog of %d items (model %s) from state", n,
                     self.active_model)
        self.g_catalog.set(len(self.catalog))
        self.g_missing.set(len(self.missing))

    def _in_catalog(self, item_id: str) -> bool:
        return any(item_id in cat.row and not cat.is_deleted(item_id)
                   for cat in self._catalogs())

    def _catalogs(self) -> list[CatalogIndex]:
        return [self.catalog] + ([self.staging] if self.staging is not None else [])

    def _start_staging(self, model: str) -> None:
        """A new model's vectors start arriving: build its catalog beside the active one,
        with the item statistics known so far."""
        self.staging_model = model
        self.staging = CatalogIndex()
        old = self.catalog
        for r, item_id in enumerate(old.ids[: old.size]):
            self.staging.set_popularity(item_id, float(old.log_pop[r]), float(old.count[r]))
        self.staging.copy_cooccurrence(old)
        self.missing = {i for i in old.ids[: old.size] if old.vector(i) is not None}
        log.info("rank-users: model swap %s -> %s started (%d items to re-embed)",
                 self.active_model, model, len(self.missing))

    def _switch_model(self, ctx) -> None:
        log.info("rank-users: catalog of model %s complete (%d items); rankings switch from "
                 "%s", self.staging_model, len(self.staging), self.active_model)
        self.catalog, self.active_model = self.staging, self.staging_model
        self.staging, self.staging_model, self.missing = None, None, set()
        active, staging = ctx.get_broadcast_state(CATALOG_STATE), \
            ctx.get_broadcast_state(STAGING_STATE)
        active.clear()
        active.put_all({k: v for k, v in staging.items()})
        staging.clear()
        models = ctx.get_broadcast_state(MODELS_STATE)
        models.put("active", self.active_model)
        models.remove("staging")

    def process_broadcast_element(self, update, ctx) -> Iterable:
        # Emits nothing, but must return an iterable: thread mode iterates the result.
        self._ensure_catalog(ctx)
        kind, item_id = update["kind"], update["item_id"]
        if kind == "item":
            model = update["model"] or self.model_id
            vec = np.frombuffer(bytes(update["vector"]), dtype=np.float32)
            packed = pack_catalog_entry(update["title"], update["vector"])
            if self.active_model is None:
                self.active_model = model
                ctx.get_broadcast_state(MODELS_STATE).put("active", model)
            if model == self.active_model:
                self.catalog.upsert(item_id, update["title"], vec)
                ctx.get_broadcast_state(CATALOG_STATE).put(item_id, packed)
            else:
                if model != self.staging_model:
                    self._start_staging(model)
                    ctx.get_broadcast_state(STAGING_STATE).clear()
                    ctx.get_broadcast_state(MODELS_STATE).put("staging", model)
                self.staging.upsert(item_id, update["title"], vec)
                ctx.get_broadcast_state(STAGING_STATE).put(item_id, packed)
                self.missing.discard(item_id)
                if not self.missing:
                    self._switch_model(ctx)
        elif kind == "delete":
            for cat in self._catalogs():
                cat.delete(item_id)
            for descriptor in (CATALOG_STATE, POPULARITY_STATE, NEIGHBOURS_STATE):
                ctx.get_broadcast_state(descriptor).remove(item_id)
            if self.staging is not None:
                ctx.get_broadcast_state(STAGING_STATE).remove(item_id)
                self.missing.discard(item_id)
                if not self.missing and len(self.staging):
                    self._switch_model(ctx)
        elif kind in ("pop", "nbrs") and not self._in_catalog(item_id):
            pass  # the item branch broadcasts catalog items only; never keep anything else
        elif kind == "pop":
            for cat in self._catalogs():
                cat.set_popularity(item_id, update["log_pop"], update["count"])
            ctx.get_broadcast_state(POPULARITY_STATE).put(
                item_id, _STATS.pack(update["log_pop"], update["count"]))
        elif kind == "nbrs":
            for cat in self._catalogs():  # each catalog its own dict: they are kept
                cat.set_cooccurrence(item_id, unpack_counts(update["neighbours"]),
                                     max_neighbours=self.cfg.max_neighbours)
            ctx.get_broadcast_state(NEIGHBOURS_STATE).put(item_id, bytes(update["neighbours"]))
        if kind in ("item", "delete"):
            self.g_catalog.set(len(self.catalog))
            self.g_missing.set(len(self.missing))
        return ()

    def process_element(self, ev, ctx) -> Iterable:
        self._ensure_catalog(ctx)
        t0 = time.perf_counter()
        user_id = ev["user_id"]
        key = user_id.encode("utf-8")
        queued = self._take_queued(user_id)
        state = queued.state if queued is not None else self._load()
        forgot_ts = -1
        if isinstance(state, Forgotten):
            if ev["type"] != "forget_user" and ev["ts"] <= state.ts:
                yield self._dead_letter(user_id, _held(ev, 0.0), "user_forgotten",
                                        f"the user was forgotten at ts {state.ts}; an older "
                                        "event must not bring them back")
                return
            state, forgot_ts = None, state.ts  # a newer event: the user starts afresh
        if state is not None:
            self._follow_model(state)
            if state.due is not None:  # the ranking of the user's previous event, first
                yield self._emit_due(state, key, user_id, queued)
        if ev["type"] == "forget_user":
            yield from self._forget(ctx, state, max(ev["ts"], forgot_ts), key)
            return
        p, cat = self.p, self.catalog
        if state is None:
            self.new_users.inc()
            state = UserState.empty(cat.dim or 384)
            self._follow_model(state)
        had_pending = bool(state.pending)
        if had_pending:
            yield from self._apply_ready(state, key, user_id)
        weight = p.weight(ev["type"], ev["value"])
        if cat.is_deleted(ev["item_id"]):
            yield self._dead_letter(user_id, _held(ev, weight), "item_deleted",
                                    f"item {ev['item_id']!r} was deleted from the catalog")
        elif recommender.observe(state, cat, p, ev["item_id"], weight, ev["ts"]):
            if self.cfg.batch_window_ms > 0:
                state.due = (ev["event_id"] or "", ev["ts"])
                self._enqueue(ctx, user_id, state, t0)
            else:
                yield self._ranking(state, key, user_id, ev["event_id"], ev["ts"], t0)
        else:
            held = _held(ev, weight)
            if state.add_pending(held, p.max_pending):
                self.pending_in.inc()
                self.pending_now += 1
                if not had_pending:
                    ctx.timer_service().register_processing_time_timer(
                        ctx.timer_service().current_processing_time() + self.cfg.pending_retry_ms)
            else:
                yield self._dead_letter(user_id, held, "pending_overflow",
                                        f"{p.max_pending} events already wait for unknown "
                                        f"items (ranking.max_pending)")
        self.profile.update(state.to_bytes())
        self.g_pending.set(self.pending_now)

    def on_timer(self, timestamp: int, ctx) -> Iterable:
        """A batch window's end (rank the window, emit this user's ranking) or a pending
        events' retry; one timer may be both."""
        self._ensure_catalog(ctx)
        self._rank_windows(timestamp)
        user_id = ctx.get_current_key()
        queued = self._take_queued(user_id)
        state = queued.state if queued is not None else self._load()
        if isinstance(state, Forgotten):
            if timestamp >= state.expires_ms:
                self.profile.clear()  # forgotten long enough: nothing of the user is left
            return
        if state is None or (state.due is None and not state.pending):
            return
        self._follow_model(state)
        key = user_id.encode("utf-8")
        if state.due is not None:
            yield self._emit_due(state, key, user_id, queued)
        if state.pending:
            yield from self._apply_ready(state, key, user_id)
            for held in state.drain_pending(self.catalog.is_deleted):
                self.pending_now -= 1
                yield self._dead_letter(user_id, held, "item_deleted",
                                        f"item {held.item_id!r} was deleted from the catalog")
            for held in state.expire_pending(now_ms() - self.cfg.pending_timeout_ms):
                self.pending_now -= 1
                yield self._dead_letter(user_id, held, "unknown_item",
                                        f"item {held.item_id!r} not in the catalog after "
                                        f"{self.cfg.pending_timeout_ms} ms "
                                        f"(ranking.pending_timeout_ms)")
            if state.pending:
                ctx.timer_service().register_processing_time_timer(
                    ctx.timer_service().current_processing_time() + self.cfg.pending_retry_ms)
        self.profile.update(state.to_bytes())
        self.g_pending.set(self.pending_now)

    def _load(self) -> "UserState | Forgotten | None":
        raw = self.profile.value()
        return None if raw is None else decode_profile(raw)

    def _forget(self, ctx, state: Optional[UserState], ts: int, key: bytes) -> Iterable:
        """Erase the user: their state becomes a :class:`Forgotten` marker (cleared by a timer
        after ``forget_memory_hours``), their ranking a tombstone."""
        if state is not None:
            self.pending_now -= len(state.pending)
        memory_ms = int(self.cfg.forget_memory_hours * 3_600_000)
        if memory_ms > 0:
            expires = ctx.timer_service().current_processing_time() + memory_ms
            self.profile.update(Forgotten(ts, expires).to_bytes())
            ctx.timer_service().register_processing_time_timer(expires)
        else:
            self.profile.clear()
        self.g_pending.set(self.pending_now)
        self.tombstones_out.inc()
        yield Row(key, None)  # tombstone: compaction erases the user's ranking

    # -- micro-batches -----------------------------------------------------------------------

    def _enqueue(self, ctx, user_id: str, state: UserState, t0: float) -> None:
        """Queue the user's due ranking in the current window and arm the window's timer."""
        window = self.cfg.batch_window_ms
        end = (ctx.timer_service().current_processing_time() // window + 1) * window
        self._windows.setdefault(end, {})[user_id] = _Queued(state, t0)
        self._queued_at[user_id] = end
        ctx.timer_service().register_processing_time_timer(end)

    def _take_queued(self, user_id: str) -> Optional["_Queued"]:
        """Remove the user from the in-memory batches; their entry (its state is the one in
        keyed state, and maybe already ranked) or None."""
        done = self._ranked.pop(user_id, None)
        if done is not None:
            return done
        end = self._queued_at.pop(user_id, None)
        if end is None:
            return None
        window = self._windows.get(end)
        return window.pop(user_id, None) if window is not None else None

    def _rank_windows(self, now: int) -> None:
        """Rank every user of the windows that ended by ``now`` (once: the first timer)."""
        for end in sorted(e for e in self._windows if e <= now):
            window = self._windows.pop(end)
            users = list(window)
            for u in users:
                self._queued_at.pop(u, None)
                self._follow_model(window[u].state)
            ranked = recommender.rank_batch(
                [(window[u].state, window[u].state.due[1]) for u in users], self.catalog,
                self.p, chunk=self.cfg.batch_max_users)
            for u, r in zip(users, ranked):
                window[u].ranked = r
                self._ranked[u] = window[u]
            if users:
                self.batches.inc()
                self.batch_sizes.inc(len(users))

    def _emit_due(self, state: UserState, key: bytes, user_id: str,
                  queued: Optional["_Queued"]) -> Row:
        event_id, ts = state.due
        state.due = None
        ranked = queued.ranked if queued is not None else None
        t0 = queued.t0 if queued is not None else time.perf_counter()
        return self._ranking(state, key, user_id, event_id, ts, t0, ranked)

    def _follow_model(self, state: UserState) -> None:
        """Interests live in one model's vector space: after a model switch, rebuild them
        from the user's recent items in the new space (at the user's next event)."""
        model = self.active_model or self.model_id
        if state.model != model:
            if state.model:
                recommender.rebuild_interests(state, self.catalog, self.p)
            state.model = model

    def _apply_ready(self, state: UserState, key: bytes, user_id: str) -> Iterable:
        """Apply (and rank) the held events whose item has arrived, oldest first."""
        cat = self.catalog
        for held in state.drain_pending(lambda i: cat.vector(i) is not None):
            recommender.observe(state, cat, self.p, held.item_id, held.weight, held.ts)
            self.pending_applied.inc()
            self.pending_now -= 1
            yield self._ranking(state, key, user_id, held.event_id, held.ts,
                                time.perf_counter())

    def _ranking(self, state: UserState, key: bytes, user_id: str, event_id: str,
                 event_ts: int, t0: float, ranked: Optional[Ranked] = None) -> Row:
        cat = self.catalog
        if ranked is None:
            ranked = recommender.rank(state, cat, self.p, event_ts)
        state.shown = [cat.ids[r] for r in ranked.rows]
        items = [{"item_id": cat.ids[r], "score": round(s, 5), "reason": why}
                 for r, s, why in zip(ranked.rows, ranked.scores, ranked.reasons)]
        now = now_ms()
        self.rankings_out.inc()
        self.latency.update((time.perf_counter() - t0) * 1000)
        return Row(key, ranking_record(
            user_id=user_id, items=items, k=self.p.k, model=self.active_model or self.model_id,
            event_id=event_id, event_ts=event_ts, emitted_ts=now, catalog_size=len(cat),
            state_digest=state.digest() if self.cfg.emit_state_digest else None))

    def _dead_letter(self, user_id: str, held: PendingEvent, reason: str, detail: str):
        self.pending_dlq.inc()
        raw = json.dumps({"event_id": held.event_id or None, "user_id": user_id,
                          "item_id": held.item_id, "weight": held.weight, "ts": held.ts},
                         separators=(",", ":")).encode("utf-8")
        return DLQ_TAG, Row(dlq_record(InvalidRecord(reason, detail), raw, self.events_topic,
                                       held.partition, held.offset, held.ts,
                                       max_raw_bytes=self.dlq_max_raw_bytes))


def _held(ev, weight: float) -> PendingEvent:
    """An event as held for an unknown item (and as dead-lettered)."""
    return PendingEvent(ev["item_id"], weight, ev["ts"], ev["event_id"] or "", now_ms(),
                        ev["partition"], ev["offset"])


def user_ttl(hours: float):
    """State TTL of a user's keyed state: refreshed by every write, never returned expired."""
    from pyflink.common import Time
    from pyflink.datastream.state import StateTtlConfig

    return (StateTtlConfig.new_builder(Time.milliseconds(int(hours * 3_600_000)))
            .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
            .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
            .build())
