"""The keyed-by-item branch: item statistics and co-occurrence counts, for the rankers.

One operator, one state value per item (:class:`recsys.item_stats.ItemRecord`), two
inputs keyed by item id: the interactions topic (each consumed item with the user's recent
items, written by the rankers) and the catalog (to know which ids are items). Only catalog items are
broadcast to the rankers; an id that is not in the catalog is counted until
``ranking.unknown_item_ttl_ms`` after its first interaction (its held events may still be
applied when it arrives) and then dropped, so random ids cannot grow the state.

Broadcasts are throttled per item: statistics at most every
``ranking.popularity_emit_interval_ms``, co-occurrence counts at most every
``ranking.neighbours_emit_interval_ms`` (each broadcast element costs a call on every ranker).
"""

from __future__ import annotations

import zlib
from typing import Iterable

from pyflink.common import Row
from pyflink.datastream.functions import KeyedCoProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor

from operators.codecs import unpack_interaction
from operators.flink_metrics import OperatorMetrics
from operators.common import LoggedOpen, now_ms
from recsys.item_stats import (COOC_DIRTY, KNOWN, STATS_DIRTY, ItemRecord, pack_counts,
                                  record_interaction)
from recsys.params import ModelParams
from operators.types import STATE_BYTES
from contracts.config import RankingSettings


def _boundary(key: str, now: int, interval_ms: int) -> int:
    """The key's next emission time: interval boundaries offset by a hash of the key, so the
    timers of thousands of items do not all fire in the same millisecond."""
    phase = zlib.crc32(key.encode("utf-8")) % interval_ms
    return ((now - phase) // interval_ms + 1) * interval_ms + phase


class ItemBranch(KeyedCoProcessFunction, LoggedOpen):
    """Interactions and catalog records keyed by item -> "pop" and "nbrs" catalog updates."""

    def __init__(self, ranking_cfg: RankingSettings):
        self.cfg = ranking_cfg

    def open(self, ctx: RuntimeContext) -> None:
        self._log_open(ctx, "item-branch")
        self.p = ModelParams.from_settings(self.cfg)
        self.state = ctx.get_state(ValueStateDescriptor("item", STATE_BYTES))
        # (key -> next armed timer): a cache that spares most records a timer call. Lost on
        # restore, where a repeated registration is harmless (one timer per key and time).
        self._armed: dict[str, int] = {}
        m = OperatorMetrics(ctx)
        self.dropped = m.counter("unknown_items_dropped")
        self.malformed = m.counter("interactions_malformed")

    # -- interactions ------------------------------------------------------------------------

    def process_element1(self, record, ctx) -> Iterable:
        """``record``: an interactions-topic row (key, value, topic, partition, offset, ts),
        the value ``codecs.pack_interaction``; the key (the item id) is the current key."""
        try:
            event_type, weight, ts, context = unpack_interaction(record[1])
        except (ValueError, IndexError, UnicodeDecodeError, TypeError):
            self.malformed.inc()  # not written by a ranker: nothing to count
            return
        rec = ItemRecord.from_bytes(self.state.value())
        updated = record_interaction(rec.log_pop, rec.count, rec.earlier, event_type, weight,
                                     ts, context, self.p, self.cfg.max_neighbours)
        if updated is None:
            return
        rec.log_pop, rec.count, changed = updated
        rec.flags |= STATS_DIRTY | (COOC_DIRTY if changed else 0)
        key = ctx.get_current_key()
        now = now_ms()
        if rec.known:
            yield from self._emit_or_arm(ctx, key, rec, now)
        elif rec.due_ms == 0:  # an id not in the catalog (yet): dropped unless it arrives
            rec.due_ms = now + self.cfg.unknown_item_ttl_ms
            ctx.timer_service().register_processing_time_timer(rec.due_ms)
        self.state.update(rec.to_bytes())

    # -- the catalog -------------------------------------------------------------------------

    def process_element2(self, item, ctx) -> Iterable:
        """A catalog record: the id becomes known (its statistics are broadcast at once), or
        is deleted (its record is dropped: the rankers free its row)."""
        if item["deleted"]:
            self.state.clear()
            return
        rec = ItemRecord.from_bytes(self.state.value())
        if rec.known:
            return
        rec.flags |= KNOWN
        rec.due_ms = 0
        yield from self._emit(ctx.get_current_key(), rec, stats=rec.count > 0,
                              cooc=bool(rec.earlier))
        self.state.update(rec.to_bytes())

    # -- timers: throttled broadcasts and expiry ---------------------------------------------

    def on_timer(self, timestamp: int, ctx) -> Iterable:
        raw = self.state.value()
        if raw is None:
            return
        key = ctx.get_current_key()
        self._armed.pop(key, None)
        rec = ItemRecord.from_bytes(raw)
        if not rec.known:
            if rec.due_ms and timestamp >= rec.due_ms:
                self.state.clear()
                self.dropped.inc()
            return
        yield from self._emit_or_arm(ctx, key, rec, timestamp, from_timer=True)
        self.state.update(rec.to_bytes())

    def _emit_or_arm(self, ctx, key: str, rec: ItemRecord, now: int,
                     from_timer: bool = False) -> Iterable:
        """Broadcast what is dirty and due; arm a timer for what must wait. Statistics go out
        at the key's next ``popularity_emit_interval_ms`` boundary, counts at the
        ``neighbours_emit_interval_ms`` boundary after they changed (``rec.due_ms``)."""
        pop_ms, nbrs_ms = self.cfg.popularity_emit_interval_ms, self.cfg.neighbours_emit_interval_ms
        if rec.flags & STATS_DIRTY and (pop_ms <= 0 or from_timer):
            yield from self._emit(key, rec, stats=True, cooc=False)
        if rec.flags & COOC_DIRTY:
            if nbrs_ms <= 0 or (rec.due_ms and now >= rec.due_ms):
                rec.due_ms = 0
                yield from self._emit(key, rec, stats=False, cooc=True)
            elif not rec.due_ms:
                rec.due_ms = _boundary(key, now, nbrs_ms)
        timers = ([_boundary(key, now, pop_ms)] if rec.flags & STATS_DIRTY else []) + \
            ([rec.due_ms] if rec.flags & COOC_DIRTY else [])
        if timers:
            at = min(timers)
            if not now < self._armed.get(key, 0) <= at:
                if len(self._armed) >= 1_000_000:
                    self._armed.clear()
                self._armed[key] = at
                ctx.timer_service().register_processing_time_timer(at)

    def _emit(self, key: str, rec: ItemRecord, stats: bool, cooc: bool) -> Iterable:
        if stats:
            rec.flags &= ~STATS_DIRTY
            yield Row("pop", key, "", None, rec.log_pop, rec.count, None, None)
        if cooc:
            rec.flags &= ~COOC_DIRTY
            yield Row("nbrs", key, "", None, None, None, pack_counts(rec.earlier), None)
