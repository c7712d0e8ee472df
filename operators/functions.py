"""The Flink functions of the streamrank topology.

Each function opens its state and resources in ``open()`` (the object itself is pickled and
shipped to the workers), does one thing per element and delegates the math to the pure modules
``ranking``, ``user_state`` and ``catalog``.
"""

from __future__ import annotations

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

from operators import ranking
from operators.catalog import CatalogIndex
from operators.user_state import PendingEvent, UserState
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
# What reaches the ranker by broadcast: an embedded item ("item"), a deletion ("delete") or a
# popularity update ("pop").
CATALOG_UPDATE_TYPE = Types.ROW_NAMED(
    ["kind", "item_id", "title", "vector", "log_pop"],
    [Types.STRING(), Types.STRING(), Types.STRING(), BYTES, Types.DOUBLE()],
)
KEYED_RECORD_TYPE = Types.ROW_NAMED(["k", "v"], [BYTES, BYTES])
VALUE_RECORD_TYPE = Types.ROW_NAMED(["v"], [BYTES])

DLQ_TAG = OutputTag("dlq", VALUE_RECORD_TYPE)

# State holding raw bytes is declared PICKLED_BYTE_ARRAY: in thread mode PyFlink 2.2 converts a
# PRIMITIVE_ARRAY(BYTE) state value element by element into a tuple of ints (and fails on an
# empty value), while pickling a ``bytes`` object is a single copy. The bytes themselves are
# our compact layouts (float32 vectors), never pickled Python objects.
STATE_BYTES = Types.PICKLED_BYTE_ARRAY()
CATALOG_STATE = MapStateDescriptor("catalog", Types.STRING(), STATE_BYTES)
POPULARITY_STATE = MapStateDescriptor("popularity", Types.STRING(), Types.DOUBLE())


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
            return Row("delete", item["item_id"], "", None, None)
        return Row("item", item["item_id"], item["title"],
                   np.asarray(vector, np.float32).tobytes(), None)

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


class ItemPopularity(KeyedProcessFunction, _LoggedOpen):
    """Events keyed by item -> decayed popularity updates (log space), for the broadcast.

    The popularity state changes with every positive event, but an update is broadcast at
    most once per ``popularity_emit_interval_ms`` per item (processing time): every broadcast
    element costs a call on every ranker subtask, and trending does not need per-event
    freshness.
    """

    def __init__(self, ranking_cfg: RankingSettings):
        self.cfg = ranking_cfg

    def open(self, ctx: RuntimeContext) -> None:
        self._log_open(ctx, "item-popularity")
        self.log_pop = ctx.get_state(ValueStateDescriptor("log-pop", Types.DOUBLE()))
        self.timer_set = ctx.get_state(ValueStateDescriptor("emit-pending", Types.BOOLEAN()))
        self.half_life_ms = self.cfg.popularity_half_life_hours * ranking.MS_PER_HOUR

    def process_element(self, ev, ctx) -> Iterable:
        w = ranking.event_weight(ev["type"], ev["value"], self.cfg.event_weights,
                                 self.cfg.rating_neutral, self.cfg.rating_scale)
        if w <= 0:  # negative feedback and control events do not make an item popular
            return
        current = self.log_pop.value()
        updated = ranking.popularity_update(-math.inf if current is None else current, w,
                                            ev["ts"], self.half_life_ms)
        self.log_pop.update(updated)
        interval = self.cfg.popularity_emit_interval_ms
        if interval <= 0:
            yield Row("pop", ev["item_id"], "", None, updated)
        elif not self.timer_set.value():
            self.timer_set.update(True)
            ctx.timer_service().register_processing_time_timer(
                ctx.timer_service().current_processing_time() + interval)

    def on_timer(self, timestamp: int, ctx) -> Iterable:
        self.timer_set.clear()
        value = self.log_pop.value()
        if value is not None:
            yield Row("pop", ctx.get_current_key(), "", None, value)


_TITLE_LEN = struct.Struct("<I")


def pack_catalog_entry(title: str, vector: bytes) -> bytes:
    t = title.encode("utf-8")
    return _TITLE_LEN.pack(len(t)) + t + bytes(vector)


def unpack_catalog_entry(data: bytes) -> tuple[str, np.ndarray]:
    (n,) = _TITLE_LEN.unpack_from(data, 0)
    title = bytes(data[4:4 + n]).decode("utf-8")
    return title, np.frombuffer(bytes(data[4 + n:]), dtype=np.float32)


class RankUsers(KeyedBroadcastProcessFunction, _LoggedOpen):
    """Per user: update the interest state with the event, emit the re-ranked top-k.

    The catalog (embeddings, deletions, popularity) arrives by broadcast and is mirrored in
    broadcast state for checkpoints, and in a :class:`CatalogIndex` for scoring. Events for
    items not in the catalog yet are kept in the user's state and applied once the item is
    known (at the user's next event).
    """

    def __init__(self, ranking_cfg: RankingSettings, model_id: str):
        self.cfg = ranking_cfg
        self.model_id = model_id

    def open(self, ctx: RuntimeContext) -> None:
        self._log_open(ctx, "rank-users")
        self.profile = ctx.get_state(ValueStateDescriptor("profile", STATE_BYTES))
        self.catalog = CatalogIndex()
        self.catalog_loaded = False
        self.half_life_ms = self.cfg.half_life_hours * ranking.MS_PER_HOUR
        self.pop_half_life_ms = self.cfg.popularity_half_life_hours * ranking.MS_PER_HOUR

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
        for item_id, log_pop in ctx.get_broadcast_state(POPULARITY_STATE).items():
            self.catalog.set_popularity(item_id, log_pop)
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
            self.catalog.set_popularity(item_id, update["log_pop"])
            ctx.get_broadcast_state(POPULARITY_STATE).put(item_id, update["log_pop"])
        return ()

    def process_element(self, ev, ctx) -> Iterable:
        self._ensure_catalog(ctx)
        user_id = ev["user_id"]
        key = user_id.encode("utf-8")
        if ev["type"] == "forget_user":
            self.profile.clear()
            yield Row(key, None)  # tombstone: compaction erases the user's ranking
            return
        cfg = self.cfg
        raw = self.profile.value()
        dim = self.catalog.dim or 384
        state = UserState.from_bytes(raw) if raw is not None else UserState.empty(dim)

        for p in state.drain_pending(self.catalog.vector):
            state.apply(self.catalog.vector(p.item_id), p.weight, p.ts, cfg.alpha,
                        self.half_life_ms)
        weight = ranking.event_weight(ev["type"], ev["value"], cfg.event_weights,
                                      cfg.rating_neutral, cfg.rating_scale)
        item_vec = self.catalog.vector(ev["item_id"])
        if item_vec is not None:
            state.apply(item_vec, weight, ev["ts"], cfg.alpha, self.half_life_ms)
        elif not state.add_pending(PendingEvent(ev["item_id"], weight, ev["ts"],
                                                ev["event_id"] or ""), cfg.max_pending):
            log.warning("user %s: pending queue full (%d), event %s for unknown item %s "
                        "not kept", user_id, cfg.max_pending, ev["event_id"], ev["item_id"])
        state.mark_seen(ev["item_id"], cfg.max_seen)
        self.profile.update(state.to_bytes())

        items = self._rank(state, ev["ts"])
        yield Row(key, ranking_record(
            user_id=user_id, items=items, k=cfg.k, model=self.model_id,
            event_id=ev["event_id"], event_ts=ev["ts"], emitted_ts=_now_ms(),
            catalog_size=len(self.catalog)))

    def _rank(self, state: UserState, now_ts: int) -> list[dict]:
        cat = self.catalog
        if cat.size == 0:
            return []
        exclude = cat.exclusion_mask(state.seen)
        if state.has_interest and state.vector.shape[0] == cat.dim:
            scores = ranking.cosine_scores(state.vector, cat.live_matrix())
            reason = "matches your interests"
        else:
            pop = cat.popularity()
            # Items nobody interacted with yet still fill the list, after the popular ones.
            scores = np.where(np.isfinite(pop), pop, -1e30)
            reason = "popular now"
        top = ranking.top_k(scores, self.cfg.k, exclude)
        out = []
        for r in top:
            s = float(scores[r])
            if reason == "popular now":
                # Decayed popularity at the event's time (log-space -> count).
                s = math.exp(s - now_ts * math.log(2.0) / self.pop_half_life_ms) \
                    if s > -1e30 else 0.0
            out.append({"item_id": cat.ids[r], "score": round(s, 5), "reason": reason})
        return out
