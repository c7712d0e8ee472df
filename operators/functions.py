"""The Flink functions of the streamrank topology.

Each function opens its state and resources in ``open()`` (the object itself is pickled and
shipped to the workers), does one thing per element and delegates the math to the pure modules
``ranking``, ``user_state`` and ``catalog``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import time
from typing import Iterable

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
from operators.recommender import ModelParams
from operators.user_state import PendingEvent, UserState, push_recent
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

EVENT_TYPE = Types.ROW_NAMED(
    ["event_id", "user_id", "item_id", "type", "value", "ts"],
    [Types.STRING(), Types.STRING(), Types.STRING(), Types.STRING(), Types.DOUBLE(),
     Types.LONG()],
)
ITEM_TYPE = Types.ROW_NAMED(
    ["item_id", "title", "text", "deleted", "ts"],
    [Types.STRING(), Types.STRING(), Types.STRING(), Types.BOOLEAN(), Types.LONG()],
)
# What reaches the ranker by broadcast: an embedded item ("item"), a deletion ("delete"), an
# item's statistics ("pop": trending log-popularity and interaction count) or its
# co-occurrence neighbours ("nbrs": JSON {neighbour id: count}).
CATALOG_UPDATE_TYPE = Types.ROW_NAMED(
    ["kind", "item_id", "title", "vector", "log_pop", "count", "neighbours"],
    [Types.STRING(), Types.STRING(), Types.STRING(), BYTES, Types.DOUBLE(), Types.DOUBLE(),
     Types.STRING()],
)
# Co-occurrence pairs from the user-history operator to the keyed-by-item counter.
PAIR_TYPE = Types.ROW_NAMED(["item_id", "neighbour"], [Types.STRING(), Types.STRING()])
KEYED_RECORD_TYPE = Types.ROW_NAMED(["k", "v"], [BYTES, BYTES])
VALUE_RECORD_TYPE = Types.ROW_NAMED(["v"], [BYTES])

DLQ_TAG = OutputTag("dlq", VALUE_RECORD_TYPE)

# State holding raw bytes is declared PICKLED_BYTE_ARRAY: in thread mode PyFlink 2.2 converts a
# PRIMITIVE_ARRAY(BYTE) state value element by element into a tuple of ints (and fails on an
# empty value), while pickling a ``bytes`` object is a single copy. The bytes themselves are
# our compact layouts (float32 vectors), never pickled Python objects.
STATE_BYTES = Types.PICKLED_BYTE_ARRAY()
CATALOG_STATE = MapStateDescriptor("catalog", Types.STRING(), STATE_BYTES)
POPULARITY_STATE = MapStateDescriptor("item-stats", Types.STRING(), STATE_BYTES)
NEIGHBOURS_STATE = MapStateDescriptor("neighbours", Types.STRING(), Types.STRING())


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


def _now_ms() -> int:
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


class _LoggedOpen:
    def _log_open(self, ctx: RuntimeContext, what: str) -> None:
        # Thread mode's RuntimeContext lacks some getters (PyFlink 2.2), so ask defensively.
        try:
            subtask = ctx.get_task_name_with_subtasks()
        except AttributeError:
            subtask = what
        log.info("%s running in python %s mode (pid %d)", subtask, python_runtime_mode(),
                 os.getpid())


class ParseEvents(ProcessFunction, _LoggedOpen):
    """Raw ``events`` records -> typed events; anything invalid -> DLQ side output."""

    def __init__(self, validation: ValidationSettings):
        self.validation = validation

    def open(self, ctx: RuntimeContext) -> None:
        self._log_open(ctx, "parse-events")

    def process_element(self, row, ctx) -> Iterable:
        raw = row["value"]
        try:
            ev = parse_event(raw, now_ms=_now_ms(), max_id_length=self.validation.max_id_length,
                             max_future_skew_ms=self.validation.max_future_skew_ms)
        except InvalidRecord as err:
            yield DLQ_TAG, Row(dlq_record(err, raw, row["topic"], row["partition"],
                                          row["offset"], _source_ts(row["ts"])))
            return
        yield Row(ev.event_id, ev.user_id, ev.item_id, ev.type, ev.value, ev.ts)


class ParseItems(ProcessFunction, _LoggedOpen):
    """Raw ``items`` records -> typed items; a null value with a key is a deletion
    (tombstone on the compacted topic); anything invalid -> DLQ side output."""

    def __init__(self, validation: ValidationSettings):
        self.validation = validation

    def open(self, ctx: RuntimeContext) -> None:
        self._log_open(ctx, "parse-items")

    def process_element(self, row, ctx) -> Iterable:
        raw, key = row["value"], row["key"]
        if raw is None and key:
            try:
                item_id = bytes(key).decode("utf-8")
            except UnicodeDecodeError:
                item_id = ""
            if item_id.strip():
                yield Row(item_id, "", "", True, _source_ts(row["ts"]))
                return
        try:
            item = parse_item(raw, now_ms=_now_ms(),
                              max_id_length=self.validation.max_id_length,
                              max_text_chars=self.validation.max_text_chars,
                              max_future_skew_ms=self.validation.max_future_skew_ms)
        except InvalidRecord as err:
            yield DLQ_TAG, Row(dlq_record(err, raw, row["topic"], row["partition"],
                                          row["offset"], _source_ts(row["ts"])))
            return
        yield Row(item.item_id, item.title, item.text(), item.deleted, item.ts)


class EmbedItems(KeyedProcessFunction, _LoggedOpen):
    """Items -> catalog updates carrying the item's embedding.

    Cache hits pass straight through. Misses are buffered in keyed state (so a checkpoint never
    loses them) and embedded together when ``batch_size`` are waiting or ``batch_timeout_ms``
    after the first, whichever comes first. Order per key is kept: once something is
    buffered, later items queue behind it.
    """

    def __init__(self, model: ModelSettings):
        self.model = model

    def open(self, ctx: RuntimeContext) -> None:
        from udfs.embedding import CachedEmbedder

        self._log_open(ctx, "embed-items")
        self.embedder = CachedEmbedder(
            self.model.name_or_path, cache_dir=self.model.cache_dir, device=self.model.device,
            batch_size=self.model.batch_size, max_length=self.model.max_length)
        self.buffer = ctx.get_list_state(ListStateDescriptor("pending-items", ITEM_TYPE))
        self.count = ctx.get_state(ValueStateDescriptor("pending-count", Types.INT()))

    def close(self) -> None:
        embedder = getattr(self, "embedder", None)
        if embedder is not None:
            s = embedder.stats
            log.info("embed-items closing: %d cache hits, %d embedded in %.1fs", s.hits,
                     s.misses, s.embed_seconds)
            embedder.close()

    @staticmethod
    def _update(item, vector: np.ndarray | None):
        if item["deleted"]:
            return Row("delete", item["item_id"], "", None, None, None, None)
        return Row("item", item["item_id"], item["title"],
                   np.asarray(vector, np.float32).tobytes(), None, None, None)

    def process_element(self, item, ctx) -> Iterable:
        count = self.count.value() or 0
        if count == 0:
            if item["deleted"]:
                yield self._update(item, None)
                return
            vec = self.embedder.lookup(item["text"])
            if vec is not None:
                yield self._update(item, vec)
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

    def _flush(self) -> Iterable:
        items = list(self.buffer.get() or [])
        self.buffer.clear()
        self.count.clear()
        live = [it for it in items if not it["deleted"]]
        vecs = self.embedder.embed([it["text"] for it in live]) if live else []
        by_pos = iter(vecs)
        for it in items:
            yield self._update(it, None if it["deleted"] else next(by_pos))


class _Throttled:
    """Emit an item's latest value at most once per interval (processing-time timer)."""

    def _schedule(self, ctx, interval_ms: int) -> bool:
        """True when the caller should emit now (no throttling); else a timer is armed."""
        if interval_ms <= 0:
            return True
        if not self.timer_set.value():
            self.timer_set.update(True)
            ctx.timer_service().register_processing_time_timer(
                ctx.timer_service().current_processing_time() + interval_ms)
        return False


class ItemStats(KeyedProcessFunction, _LoggedOpen, _Throttled):
    """Events keyed by item -> the item's statistics for the broadcast: trending
    log-popularity (decayed positive feedback) and interaction count.

    Updates are broadcast at most once per ``popularity_emit_interval_ms`` per item: every
    broadcast element costs a call on every ranker subtask.
    """

    def __init__(self, ranking_cfg: RankingSettings):
        self.cfg = ranking_cfg

    def open(self, ctx: RuntimeContext) -> None:
        self._log_open(ctx, "item-stats")
        self.p = ModelParams.from_settings(self.cfg)
        self.stats = ctx.get_state(ValueStateDescriptor("stats", Types.PICKLED_BYTE_ARRAY()))
        self.timer_set = ctx.get_state(ValueStateDescriptor("emit-pending", Types.BOOLEAN()))

    def process_element(self, ev, ctx) -> Iterable:
        raw = self.stats.value()
        updated = recommender.item_stats_update(
            *(_STATS.unpack(raw) if raw is not None else (-math.inf, 0.0)), ev["type"],
            self.p.weight(ev["type"], ev["value"]), ev["ts"], self.p)
        if updated is None:
            return
        log_pop, count = updated
        self.stats.update(_STATS.pack(log_pop, count))
        if self._schedule(ctx, self.cfg.popularity_emit_interval_ms):
            yield Row("pop", ev["item_id"], "", None, log_pop, count, None)

    def on_timer(self, timestamp: int, ctx) -> Iterable:
        self.timer_set.clear()
        raw = self.stats.value()
        if raw is not None:
            log_pop, count = _STATS.unpack(raw)
            yield Row("pop", ctx.get_current_key(), "", None, log_pop, count, None)


class UserHistory(KeyedProcessFunction, _LoggedOpen):
    """Events keyed by user -> co-occurrence pairs with the user's recent items.

    Keeps the same recent-items list as the ranker (``ranking.history_size``) so the
    collaborative signal needs no cycle back from the ranker.
    """

    def __init__(self, ranking_cfg: RankingSettings):
        self.cfg = ranking_cfg

    def open(self, ctx: RuntimeContext) -> None:
        self._log_open(ctx, "user-history")
        self.p = ModelParams.from_settings(self.cfg)
        self.history = ctx.get_state(ValueStateDescriptor("recent", Types.STRING()))

    def process_element(self, ev, ctx) -> Iterable:
        if ev["type"] == "forget_user":
            self.history.clear()
            return
        raw = self.history.value()
        recent = json.loads(raw) if raw else []
        w = self.p.weight(ev["type"], ev["value"])
        if self.p.counts_as_consumption(ev["type"], w):
            for x, y in recommender.cooc_pairs(recent, ev["item_id"]):
                yield Row(x, y)
        push_recent(recent, ev["item_id"], self.p.history_size)
        self.history.update(json.dumps(recent))


class Cooccurrence(KeyedProcessFunction, _LoggedOpen, _Throttled):
    """Co-occurrence pairs keyed by item -> the item's neighbour counts for the broadcast
    (the heaviest ``max_neighbours``), at most once per ``popularity_emit_interval_ms``.

    Counts live in a MapState so one pair costs one increment, not a rewrite of the item's
    whole neighbour list; the list is assembled only when it is emitted.
    """

    def __init__(self, ranking_cfg: RankingSettings):
        self.cfg = ranking_cfg

    def open(self, ctx: RuntimeContext) -> None:
        self._log_open(ctx, "cooccurrence")
        self.counts = ctx.get_map_state(
            MapStateDescriptor("neighbour-counts", Types.STRING(), Types.DOUBLE()))
        self.size = ctx.get_state(ValueStateDescriptor("neighbour-n", Types.INT()))
        self.timer_set = ctx.get_state(ValueStateDescriptor("emit-pending", Types.BOOLEAN()))

    def _neighbours(self) -> dict[str, float]:
        return {k: v for k, v in self.counts.items()}

    def process_element(self, pair, ctx) -> Iterable:
        neighbour = pair[1]
        current = self.counts.get(neighbour)
        self.counts.put(neighbour, (current or 0.0) + 1.0)
        if current is None:
            size = (self.size.value() or 0) + 1
            if size > 2 * self.cfg.max_neighbours:  # same rule as recommender.cooc_add
                kept = self._neighbours()
                recommender.cooc_prune(kept, self.cfg.max_neighbours)
                self.counts.clear()
                self.counts.put_all(kept)
                size = len(kept)
            self.size.update(size)
        if self._schedule(ctx, self.cfg.popularity_emit_interval_ms):
            yield Row("nbrs", pair[0], "", None, None, None,
                      json.dumps(self._neighbours(), separators=(",", ":")))

    def on_timer(self, timestamp: int, ctx) -> Iterable:
        self.timer_set.clear()
        neighbours = self._neighbours()
        if neighbours:
            yield Row("nbrs", ctx.get_current_key(), "", None, None, None,
                      json.dumps(neighbours, separators=(",", ":")))


_TITLE_LEN = struct.Struct("<I")
_STATS = struct.Struct("<dd")


def pack_catalog_entry(title: str, vector: bytes) -> bytes:
    t = title.encode("utf-8")
    return _TITLE_LEN.pack(len(t)) + t + bytes(vector)


def unpack_catalog_entry(data: bytes) -> tuple[str, np.ndarray]:
    (n,) = _TITLE_LEN.unpack_from(data, 0)
    title = bytes(data[4:4 + n]).decode("utf-8")
    return title, np.frombuffer(bytes(data[4 + n:]), dtype=np.float32)


class RankUsers(KeyedBroadcastProcessFunction, _LoggedOpen):
    """Per user: learn from and apply the event, emit the re-ranked top-k.

    The catalog (embeddings, deletions), item statistics and co-occurrence neighbours arrive
    by broadcast and are mirrored in broadcast state for checkpoints, and in a
    :class:`CatalogIndex` for scoring. The model itself is :mod:`operators.recommender`, the
    same code ``streamrank eval`` measures. Events for items not in the catalog yet are kept
    in the user's state and applied once the item is known (at the user's next event).
    """

    def __init__(self, ranking_cfg: RankingSettings, model_id: str):
        self.cfg = ranking_cfg
        self.model_id = model_id

    def open(self, ctx: RuntimeContext) -> None:
        self._log_open(ctx, "rank-users")
        self.p = ModelParams.from_settings(self.cfg)
        self.profile = ctx.get_state(ValueStateDescriptor("profile", STATE_BYTES))
        self.catalog = CatalogIndex()
        self.catalog_loaded = False

    def _ensure_catalog(self, ctx) -> None:
        """After a restore the broadcast state holds the catalog; rebuild the index once."""
        if self.catalog_loaded:
            return
        self.catalog_loaded = True
        n = 0
        for item_id, packed in ctx.get_broadcast_state(CATALOG_STATE).items():
            title, vec = unpack_catalog_entry(packed)
            self.catalog.upsert(item_id, title, vec)
            n += 1
        for item_id, packed in ctx.get_broadcast_state(POPULARITY_STATE).items():
            self.catalog.set_popularity(item_id, *_STATS.unpack(packed))
        for item_id, encoded in ctx.get_broadcast_state(NEIGHBOURS_STATE).items():
            self.catalog.set_neighbours(item_id, json.loads(encoded))
        if n:
            log.info("rank-users restored a catalog of %d items from state", n)

    def process_broadcast_element(self, update, ctx) -> Iterable:
        # Emits nothing, but must return an iterable: thread mode iterates the result.
        self._ensure_catalog(ctx)
        kind, item_id = update["kind"], update["item_id"]
        if kind == "item":
            vec = np.frombuffer(bytes(update["vector"]), dtype=np.float32)
            self.catalog.upsert(item_id, update["title"], vec)
            ctx.get_broadcast_state(CATALOG_STATE).put(
                item_id, pack_catalog_entry(update["title"], update["vector"]))
        elif kind == "delete":
            self.catalog.delete(item_id)
            ctx.get_broadcast_state(CATALOG_STATE).remove(item_id)
        elif kind == "pop":
            self.catalog.set_popularity(item_id, update["log_pop"], update["count"])
            ctx.get_broadcast_state(POPULARITY_STATE).put(
                item_id, _STATS.pack(update["log_pop"], update["count"]))
        elif kind == "nbrs":
            self.catalog.set_neighbours(item_id, json.loads(update["neighbours"]))
            ctx.get_broadcast_state(NEIGHBOURS_STATE).put(item_id, update["neighbours"])
        return ()

    def process_element(self, ev, ctx) -> Iterable:
        self._ensure_catalog(ctx)
        user_id = ev["user_id"]
        key = user_id.encode("utf-8")
        if ev["type"] == "forget_user":
            self.profile.clear()
            yield Row(key, None)  # tombstone: compaction erases the user's ranking
            return
        p, cat = self.p, self.catalog
        raw = self.profile.value()
        state = UserState.from_bytes(raw) if raw is not None else UserState.empty(cat.dim or 384)

        for pend in state.drain_pending(lambda i: cat.vector(i) is not None):
            recommender.apply_event(state, cat, p, pend.item_id, pend.weight, pend.ts)
        weight = p.weight(ev["type"], ev["value"])
        if not recommender.apply_event(state, cat, p, ev["item_id"], weight, ev["ts"]):
            if not state.add_pending(PendingEvent(ev["item_id"], weight, ev["ts"],
                                                  ev["event_id"] or ""), p.max_pending):
                log.warning("user %s: pending queue full (%d), event %s for unknown item %s "
                            "not kept", user_id, p.max_pending, ev["event_id"], ev["item_id"])
        state.mark_seen(ev["item_id"], p.max_seen, p.history_size)

        ranked = recommender.rank(state, cat, p, ev["ts"])
        state.shown = [cat.ids[r] for r in ranked.rows]
        self.profile.update(state.to_bytes())
        items = [{"item_id": cat.ids[r], "score": round(s, 5), "reason": why}
                 for r, s, why in zip(ranked.rows, ranked.scores, ranked.reasons)]
        yield Row(key, ranking_record(
            user_id=user_id, items=items, k=p.k, model=self.model_id,
            event_id=ev["event_id"], event_ts=ev["ts"], emitted_ts=_now_ms(),
            catalog_size=len(cat)))
