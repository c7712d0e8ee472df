"""The ranker: events keyed by user + the broadcast catalog -> each user's re-ranked top-k."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
from pyflink.common import Row
from pyflink.datastream.functions import KeyedBroadcastProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor

from recsys import recommender
from recsys.catalog import CatalogIndex
from operators.codecs import STATS, pack_catalog_entry, unpack_catalog_entry
from operators.common import LoggedOpen, now_ms, user_ttl
from operators.flink_metrics import LatencyWindow, OperatorMetrics
from recsys.item_stats import unpack_counts
from recsys.recommender import ModelParams, Ranked
from operators.types import (CATALOG_STATE, DLQ_TAG, MODELS_STATE, NEIGHBOURS_STATE,
                             POPULARITY_STATE, STAGING_STATE, STATE_BYTES)
from recsys.user_state import Forgotten, PendingEvent, UserState, decode_profile
from contracts.config import RankingSettings
from contracts.messages import InvalidRecord, dlq_record, ranking_record

log = logging.getLogger("streamrank.operators")


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
    :class:`CatalogIndex` for scoring. The model itself is :mod:`recsys.recommender`, the
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
                cat.set_popularity(item_id, *STATS.unpack(packed))
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
                item_id, STATS.pack(update["log_pop"], update["count"]))
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
