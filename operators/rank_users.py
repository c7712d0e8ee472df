"""The ranker: events keyed by user + the broadcast catalog -> each user's re-ranked top-k."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Iterable, Optional, Union

from pyflink.common import Row
from pyflink.datastream.functions import KeyedBroadcastProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor

from contracts.config import RankingSettings, ValidationSettings, default_settings
from contracts.messages import Event, InvalidRecord, dlq_record, ranking_record
from operators.catalog_mirror import CatalogMirror
from operators.common import LoggedOpen, now_ms, user_ttl
from operators.flink_metrics import LatencyWindow, OperatorMetrics
from operators.parse import EventParser, event_records
from operators.codecs import pack_interaction
from operators.types import DLQ_TAG, STATE_BYTES, TO_INTERACTIONS, TO_RANKINGS
from recsys import kernel, recommender, user_step
from recsys.params import ModelParams
from recsys.recommender import Ranked
from recsys.user_state import Forgotten, UserState, decode_profile
from recsys.user_step import Emit, Interaction, Reject, Slot, StepConfig, Tombstone


# A statistics batch that arrives when no event has for this long is merged at once (nothing
# waits behind it); else a slice per event and timer (``ranking.merge_slice_pairs``), paced.
_IDLE_S = 0.1
# The share of the ranker's time its co-occurrence merge takes at most: after a slice that
# took d seconds, the next is merged no sooner than d * (1 / _MERGE_DUTY - 1) later. A
# boundary's batch is ~100 ms of merging at 1,000 events/s; a slice with every event took
# it all within the next ~200 ms, the interpreter's lock (shared by every Python operator of
# the TaskManager) was the merge's for that long and events queued behind it (p99 99-117 ms
# at 1,000 events/s, spikes at each boundary). Paced, the merge spreads over the interval.
# At ~2,500 events/s it needs ~20% of the time, so 0.3 keeps up; a longer backlog delays only
# new co-occurrence counts, never an event.
_MERGE_DUTY = 0.3


@dataclass
class _Queued:
    """A user whose ranking is due at the end of a window, kept in memory until then (the
    same state is in keyed state: this only saves decoding it, and batches the ranking)."""

    state: UserState
    end: int  # the window's end (processing time)
    t0: float  # when the first event the ranking covers reached the ranker (perf_counter)
    ranked: Optional[Ranked] = None  # set once the window is ranked


class RankUsers(KeyedBroadcastProcessFunction, LoggedOpen):
    """Per user: parse each event record (the topic keyed by user in Java: no Python operator
    runs before this one), apply it to the user's state and emit the re-ranked top-k.

    What an event does is :mod:`recsys.user_step` (the same functions ``streamrank eval``,
    the bench's loop and chaos's reference run); this class loads the user's state, calls
    them, stores the state, arms the timers they ask for and turns their outputs into
    records: rankings and tombstones, and each consumed item with the user's recent items
    (to the interactions topic, read by the item branch), both on the main output with their
    route (``operators.types.ROUTED_RECORD_TYPE``); dead letters on the DLQ side output. The
    catalog and the item statistics arrive by broadcast
    (:class:`CatalogMirror`).

    Coalesced rankings (``ranking.emit_window_ms`` > 0): a user's ranking falls due at the
    end of a window, a processing-time timer. The first timer of a window ranks every user
    due in it together (:func:`recommender.rank_batch`); each user's own timer then emits
    that ranking and stores what was shown, in the user's key context. After a restore the
    in-memory window is gone, but the due events and the timer are in the checkpoint: the
    timer ranks that user alone.
    """

    def __init__(self, ranking_cfg: RankingSettings, model_id: str, events_topic: str,
                 validation: Optional[ValidationSettings] = None):
        self.cfg = ranking_cfg
        self.model_id = model_id
        self.events_topic = events_topic
        self.validation = validation if validation is not None else default_settings().validation
        # Processing time in ms: Python's clock, the one Flink's processing time reads
        # (System.currentTimeMillis, the same process): asking the timer service is a JVM call
        # per event, which lets go of the interpreter's lock. Tests set a clock of their own.
        self.clock = now_ms

    def open(self, ctx: RuntimeContext) -> None:
        self._log_open(ctx, "rank-users")
        self.p = dataclasses.replace(ModelParams.from_settings(self.cfg),
                                     kernel_precision=kernel.for_taskmanager(
                                         self.cfg.kernel_precision))
        self.step = StepConfig.from_settings(self.cfg)
        descriptor = ValueStateDescriptor("profile", STATE_BYTES)
        if self.cfg.user_ttl_hours > 0:
            descriptor.enable_time_to_live(user_ttl(self.cfg.user_ttl_hours))
        self.profile = ctx.get_state(descriptor)
        self.mirror = CatalogMirror(self.model_id, self.cfg.max_neighbours,
                                    self.cfg.merge_slice_pairs)
        m = self.metrics = OperatorMetrics(ctx)
        self.parser = EventParser(self.validation, m)
        self.rankings_out = m.batched("rankings_out")  # (flushed at each window)
        self.events_covered = m.batched("events_ranked")
        self.tombstones_out = m.counter("tombstones_out")
        self.new_users = m.counter("users_new")
        self.pending_in = m.counter("pending_held")
        self.pending_applied = m.counter("pending_applied")
        self.pending_dlq = m.counter("pending_dlq")
        self.pending_now = 0
        self.g_pending = m.value("pending_events")
        self.g_catalog = m.value("catalog_items")
        self.g_missing = m.value("swap_items_missing")
        self.g_backlog = m.value("cooc_merge_backlog")
        # Time from the first event a ranking covers reaching the ranker to the ranking
        # (state, scoring, encoding, and the wait for the end of its window).
        self.latency = LatencyWindow(m, "ranking_us", scale=1000)
        self.batch_sizes = m.batched("batched_rankings")
        self.batches = m.batched("ranking_batches")
        # Windows: end -> {user_id: _Queued}; users of windows ranked already whose own
        # timer has not emitted yet.
        self._windows: dict[int, dict[str, _Queued]] = {}
        self._queued_at: dict[str, int] = {}
        self._ranked: dict[str, _Queued] = {}
        self._last_event = 0.0  # perf_counter of the last event
        self._merge_after = 0.0  # merge_clock before which no slice is merged (_MERGE_DUTY)
        self.merge_clock = time.perf_counter  # (tests set their own)

    @property
    def catalog(self):
        return self.mirror.catalog

    def process_broadcast_element(self, update, ctx) -> Iterable:
        # Emits nothing, but must return an iterable: thread mode iterates the result.
        self.mirror.restore(ctx)
        self.mirror.apply(update, ctx)
        if self.mirror.merge_backlog and time.perf_counter() - self._last_event > _IDLE_S:
            self.mirror.merge_some(everything=True)
        self.g_backlog.set(self.mirror.merge_backlog)
        if update["kind"] in ("item", "delete"):
            self.g_catalog.set(len(self.mirror.catalog))
            self.g_missing.set(len(self.mirror.missing))
        return ()

    def process_element(self, element, ctx) -> Iterable:
        """``element``: an events-topic record keyed by user (``kafka_io.keyed_by_user``), or
        a batch of the user's records in the order read (``flink.event_batch_ms``), each
        parsed here (:class:`EventParser`): a dead letter, or the user's step. A batch's
        steps share one state read and one write, as if its events came one by one."""
        self.mirror.restore(ctx)
        t0 = self._last_event = time.perf_counter()
        if self.mirror.merge_backlog:  # a slice of the co-occurrence received
            self._merge_slice()
        slot = queued = user_id = None
        now = self.clock()
        for row in event_records(element):
            incoming = self.parser.parse(row, row["routed_by"])
            if not isinstance(incoming, Event):
                yield incoming  # (DLQ_TAG, dead letter)
                continue
            if slot is None:
                user_id = incoming.user_id
                queued = self._take_queued(user_id)
                if queued is not None:
                    queued.ranked = None  # ranked before this event: no longer its ranking
                slot = Slot(queued.state if queued is not None else self._load())
            due_before = getattr(slot.state, "due", None)
            for out in user_step.on_event(slot, incoming, self.catalog, self.p, self.step,
                                          self.mirror.model, now):
                yield self._record(out, slot.state, user_id, queued, t0)
            if queued is not None and getattr(slot.state, "due", None) is not due_before:
                queued = None  # a new due ranking: a window of its own
        if slot is not None:
            self._store(ctx, user_id, slot, now, queued, t0)

    def on_timer(self, timestamp: int, ctx) -> Iterable:
        """A window's end, a held events' retry or a forgotten marker's expiry (or several)."""
        self.mirror.restore(ctx)
        if self.mirror.merge_backlog:
            self._merge_slice()
        self._rank_windows(timestamp)
        user_id = ctx.get_current_key()
        queued = self._take_queued(user_id)
        before = queued.state if queued is not None else self._load()
        slot = Slot(before)
        changed = False
        for out in user_step.on_timer(slot, self.catalog, self.p, self.step, self.mirror.model,
                                      timestamp):
            changed = True
            yield self._record(out, slot.state, user_id, queued, time.perf_counter())
        if changed or slot.state is not before or slot.wake_at:
            # (else nothing to write.) A ranking made due here (held events applied) is timed
            # from now.
            self._store(ctx, user_id, slot, timestamp, None, time.perf_counter())
        if not self._ranked:  # the last ranking of the windows ranked is out
            self.metrics.flush()

    def _merge_slice(self) -> None:
        start = self.merge_clock()
        if start < self._merge_after:
            return
        self.mirror.merge_some()
        end = self.merge_clock()
        self._merge_after = end + (end - start) * (1 / _MERGE_DUTY - 1)
        self.g_backlog.set(self.mirror.merge_backlog)  # (a JVM call only when it changes)

    # -- state and timers ----------------------------------------------------------------------

    def _load(self) -> Union[UserState, Forgotten, None]:
        raw = self.profile.value()
        return None if raw is None else decode_profile(raw)

    def _store(self, ctx, user_id: str, slot: Slot, now: int, queued: Optional[_Queued],
               t0: float) -> None:
        """Write the state and arm its timers; a due ranking goes into the in-memory window
        of the timer that will emit it: ``queued``'s (the due ranking it held, extended by
        this step) even when that window has ended and its timer not yet fired (a backlog),
        so that the window's first timer ranks the user with the others; else the window of
        ``now``."""
        state = slot.state
        if state is None:
            self.profile.clear()
        else:
            self.profile.update(state.to_bytes())
        for at in set(slot.wake_at):
            ctx.timer_service().register_processing_time_timer(at)
        if isinstance(state, UserState) and state.due is not None and self.step.emit_window_ms:
            if queued is None:
                queued = _Queued(state, user_step.window_end(now, self.step.emit_window_ms), t0)
            queued.state = state
            self._windows.setdefault(queued.end, {})[user_id] = queued
            self._queued_at[user_id] = queued.end
        if slot.new_user:
            self.new_users.inc()
        if slot.applied_held:
            self.pending_applied.inc(slot.applied_held)
        if slot.held_delta:
            if slot.held_delta > 0:
                self.pending_in.inc(slot.held_delta)
            self.pending_now += slot.held_delta
            self.g_pending.set(self.pending_now)

    def _take_queued(self, user_id: str) -> Optional[_Queued]:
        """Remove the user from the in-memory windows: their entry (its state is the one in
        keyed state, maybe ranked already) or None."""
        done = self._ranked.pop(user_id, None)
        if done is not None:
            return done
        end = self._queued_at.pop(user_id, None)
        window = self._windows.get(end) if end is not None else None
        return window.pop(user_id, None) if window is not None else None

    def _rank_windows(self, now: int) -> None:
        """Rank every user of the windows that ended by ``now`` (once: the first timer)."""
        for end in sorted(e for e in self._windows if e <= now):
            window = self._windows.pop(end)
            users = list(window)
            for u in users:
                self._queued_at.pop(u, None)
                user_step.follow_model(window[u].state, self.catalog, self.p,
                                       self.mirror.model)
            ranked = recommender.rank_batch(
                [(window[u].state, window[u].state.due.ts) for u in users], self.catalog,
                self.p, chunk=self.cfg.batch_max_users)
            for u, r in zip(users, ranked):
                window[u].ranked = r
                self._ranked[u] = window[u]
            if users:
                self.batches.inc()
                self.batch_sizes.inc(len(users))

    # -- outputs ------------------------------------------------------------------------------

    def _record(self, out, state, user_id: str, queued: Optional[_Queued], t0: float):
        key = user_id.encode("utf-8")
        if isinstance(out, Emit):
            ranked = None
            if queued is not None and queued.ranked is not None:
                ranked, queued.ranked = queued.ranked, None  # serves the first emit only
                t0 = queued.t0
            return self._ranking(state, key, user_id, out, t0, ranked)
        if isinstance(out, Interaction):  # to the item branch, through the interactions topic
            return Row(out.item_id.encode("utf-8"), pack_interaction(
                out.type, out.weight, out.ts, out.context), TO_INTERACTIONS)
        if isinstance(out, Reject):
            return self._dead_letter(user_id, out)
        assert isinstance(out, Tombstone)
        self.tombstones_out.inc()
        return Row(key, None, TO_RANKINGS)  # compaction erases the user's ranking

    def _ranking(self, state: UserState, key: bytes, user_id: str, out: Emit, t0: float,
                 ranked: Optional[Ranked]) -> Row:
        cat = self.catalog
        if ranked is None:
            ranked = recommender.rank(state, cat, self.p, out.due.ts)
        items = user_step.show(state, ranked, cat)
        self.rankings_out.inc()
        self.events_covered.inc(len(out.due.event_ids))
        self.latency.update((time.perf_counter() - t0) * 1000)
        return Row(key, ranking_record(
            user_id=user_id, items=items, k=self.p.k, model=self.mirror.model,
            event_ids=out.due.event_ids, event_ts=out.due.ts, emitted_ts=int(time.time() * 1000),
            catalog_size=len(cat),
            state_digest=state.digest() if self.cfg.emit_state_digest else None), TO_RANKINGS)

    def _dead_letter(self, user_id: str, out: Reject):
        self.pending_dlq.inc()
        held = out.event
        raw = json.dumps({"event_id": held.event_id or None, "user_id": user_id,
                          "item_id": held.item_id, "weight": held.weight, "ts": held.ts},
                         separators=(",", ":")).encode("utf-8")
        return DLQ_TAG, Row(dlq_record(InvalidRecord(out.reason, out.detail), raw,
                                       self.events_topic, held.partition, held.offset, held.ts,
                                       max_raw_bytes=self.validation.dlq_max_raw_bytes))
