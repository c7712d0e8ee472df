"""One user's step: what an event (or a wake-up) does to the user's state, and what to emit.

Plain functions over one user's :class:`UserState` and the catalog. The Flink ranker
(``operators/rank_users.py``) only loads the state, calls them, stores the state, arms the
timers they ask for and turns their outputs into records; ``streamrank eval``, the bench's
plain loop and chaos's failure-free reference call the same functions (through
:class:`LocalUsers`), so none of them can drift from the job.

An event, in order:

1. a user forgotten by ``forget_user`` stays a :class:`Forgotten` marker for
   ``ranking.forget_memory_hours``: an older event is refused (``user_forgotten``), a newer
   one starts a new user;
2. ``forget_user`` erases the user: a :class:`Tombstone` (after the ranking still due);
3. the user's state follows the active embedding model (interests rebuilt after a switch);
4. events held for items that have arrived since are applied, oldest first;
5. the event is refused if its item was deleted (``item_deleted``); else a consumption
   (``ModelParams.counts_as_consumption``) goes out as an :class:`Interaction` for the item
   statistics, with the user's recent items before it; the event is applied if its item is
   known (learn, move the interests, mark seen), or else held until the item arrives
   (``pending_overflow`` past ``ranking.max_pending``);
6. an applied event makes a ranking due. With ``ranking.emit_window_ms`` = 0 it is ranked at
   once (:class:`Emit` of that one event). Otherwise the user's due ranking collects every
   event applied until the window ends (processing time, aligned to multiples of the
   window), and one ranking covers all of them; it is emitted at once if it would cover more
   than ``ranking.max_covered_events``.

A wake-up (:func:`on_timer`) emits the due ranking, applies held events whose item arrived,
refuses held events whose item was deleted or that waited longer than
``ranking.pending_timeout_ms``, and clears a forgotten marker once it expires.

Outputs are yielded in order; the caller handles each as it comes (an :class:`Emit` ranks
the state as it is at that moment, before the generator goes on).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional, Union

import numpy as np

from contracts.messages import Event
from recsys import recommender
from recsys.catalog import CatalogIndex
from recsys.item_stats import cooc_context
from recsys.params import ModelParams
from recsys.recommender import Ranked
from recsys.user_state import Due, Forgotten, PendingEvent, UserState


@dataclass(frozen=True)
class StepConfig:
    """The step's timing settings (``ranking.*`` in ``conf/streamrank.yaml``), in ms."""

    emit_window_ms: int
    max_covered_events: int
    pending_retry_ms: int
    pending_timeout_ms: int
    forget_memory_ms: int

    @classmethod
    def from_settings(cls, r) -> "StepConfig":
        return cls(emit_window_ms=r.emit_window_ms, max_covered_events=r.max_covered_events,
                   pending_retry_ms=r.pending_retry_ms, pending_timeout_ms=r.pending_timeout_ms,
                   forget_memory_ms=int(r.forget_memory_hours * 3_600_000))

    def per_event(self) -> "StepConfig":
        """The same, with every event ranked on its own (``emit_window_ms`` 0)."""
        import dataclasses

        return dataclasses.replace(self, emit_window_ms=0)


@dataclass
class Emit:
    """Rank the user's state as it is now and emit it: the ranking covers ``due``'s events."""

    due: Due


@dataclass
class Reject:
    """A dead letter: the event, why, and a sentence for the operator."""

    event: PendingEvent
    reason: str
    detail: str


class Tombstone:
    """The user is forgotten: erase their ranking (a null value on the compacted topic)."""


@dataclass
class Interaction:
    """A consumed item, for the item statistics and co-occurrence counts (the job's
    keyed-by-item branch, or ``item_stats.InlineItemStats``): the event's item, type, weight
    and time, and its co-occurrence context (``item_stats.cooc_context``: the user's
    ``ranking.cooc_context_size`` most recent items before it but itself, oldest first)."""

    item_id: str
    type: str
    weight: float
    ts: int
    context: list[str]


Output = Union[Emit, Reject, Tombstone, Interaction]


@dataclass
class Slot:
    """One user's keyed state going into a step and coming out of it, plus what the step asks
    of the runtime: processing times to wake the user at, and counts for metrics."""

    state: Union[UserState, Forgotten, None]
    wake_at: list[int] = field(default_factory=list)
    new_user: bool = False
    held_delta: int = 0  # change in the number of events held for unknown items
    applied_held: int = 0  # held events applied because their item arrived


def held(ev: Event, weight: float, now_ms: int) -> PendingEvent:
    """An event as held for an unknown item (and as dead-lettered)."""
    return PendingEvent(ev.item_id, weight, ev.ts, ev.event_id or "", now_ms, ev.partition,
                        ev.offset)


def on_event(slot: Slot, ev: Event, cat: CatalogIndex, p: ModelParams, cfg: StepConfig,
             model: str, now_ms: int, cooc: Optional[np.ndarray] = None) -> Iterator[Output]:
    """One event of the slot's user (see the module docstring). ``cooc``: the state's
    co-occurrence scores before the event, when the caller has them (saves recomputing)."""
    state, forgot_ts = slot.state, -1
    if isinstance(state, Forgotten):
        if ev.type != "forget_user" and ev.ts <= state.ts:
            yield Reject(held(ev, 0.0, now_ms), "user_forgotten",
                         f"the user was forgotten at ts {state.ts}; an older event must not "
                         "bring them back")
            return
        state, forgot_ts = None, state.ts  # a newer event: the user starts afresh
        slot.state = None
    if state is not None:
        follow_model(state, cat, p, model)
    if ev.type == "forget_user":
        yield from forget(slot, max(ev.ts, forgot_ts), now_ms, cfg)
        return
    if state is None:
        state = slot.state = UserState.empty(cat.dim or 384)
        state.model = model
        slot.new_user = True
    if state.pending:
        yield from apply_arrived(slot, cat, p, cfg, now_ms)
    weight = p.weight(ev.type, ev.value)
    if cat.is_deleted(ev.item_id):
        yield Reject(held(ev, weight, now_ms), "item_deleted",
                     f"item {ev.item_id!r} was deleted from the catalog")
        return
    if p.counts_as_consumption(ev.type, weight):  # known or not: the item branch counts both
        yield Interaction(ev.item_id, ev.type, weight, ev.ts,
                          cooc_context(state.history, ev.item_id, p.cooc_context_size))
    if recommender.observe(state, cat, p, ev.item_id, weight, ev.ts, cooc=cooc):
        yield from make_due(slot, ev.event_id or "", ev.ts, cfg, now_ms)
    elif state.add_pending(held(ev, weight, now_ms), p.max_pending):
        slot.held_delta += 1
        if len(state.pending) == 1:
            slot.wake_at.append(now_ms + cfg.pending_retry_ms)
    else:
        yield Reject(held(ev, weight, now_ms), "pending_overflow",
                     f"{p.max_pending} events already wait for unknown items "
                     "(ranking.max_pending)")


def on_timer(slot: Slot, cat: CatalogIndex, p: ModelParams, cfg: StepConfig, model: str,
             now_ms: int) -> Iterator[Output]:
    """The user's wake-up at ``now_ms``: a window's end, a held events' retry, or the end of
    a forgotten marker; one wake-up may be several of them."""
    state = slot.state
    if isinstance(state, Forgotten):
        if now_ms >= state.expires_ms:
            slot.state = None  # forgotten long enough: nothing of the user is left
        return
    if state is None or (state.due is None and not state.pending):
        return
    follow_model(state, cat, p, model)
    if state.due is not None:
        yield Emit(take_due(state))
    if not state.pending:
        return
    yield from apply_arrived(slot, cat, p, cfg, now_ms)
    for gone in state.drain_pending(cat.is_deleted):
        slot.held_delta -= 1
        yield Reject(gone, "item_deleted", f"item {gone.item_id!r} was deleted from the catalog")
    for old in state.expire_pending(now_ms - cfg.pending_timeout_ms):
        slot.held_delta -= 1
        yield Reject(old, "unknown_item",
                     f"item {old.item_id!r} not in the catalog after {cfg.pending_timeout_ms} ms "
                     "(ranking.pending_timeout_ms)")
    if state.pending:
        slot.wake_at.append(now_ms + cfg.pending_retry_ms)


def make_due(slot: Slot, event_id: str, ts: int, cfg: StepConfig,
             now_ms: int) -> Iterator[Output]:
    """An applied event makes the user's ranking due: at once (per-event mode), or at the end
    of the current window, covering every event applied until then."""
    state = slot.state
    if cfg.emit_window_ms <= 0:
        yield Emit(Due([event_id], ts))
        return
    if state.due is None:
        state.due = Due([event_id], ts)
        slot.wake_at.append(window_end(now_ms, cfg.emit_window_ms))
    else:
        state.due.event_ids.append(event_id)
        state.due.ts = max(state.due.ts, ts)
    if len(state.due.event_ids) >= cfg.max_covered_events:
        yield Emit(take_due(state))


def window_end(now_ms: int, window_ms: int) -> int:
    """The end of the window ``now_ms`` falls in (windows aligned to multiples of the
    window, so every user due in one window wakes at the same time)."""
    return (now_ms // window_ms + 1) * window_ms


def take_due(state: UserState) -> Due:
    due, state.due = state.due, None
    return due


def apply_arrived(slot: Slot, cat: CatalogIndex, p: ModelParams, cfg: StepConfig,
                  now_ms: int) -> Iterator[Output]:
    """Apply the held events whose item has arrived, oldest first; each makes a ranking due."""
    state = slot.state
    for ev in state.drain_pending(lambda i: cat.vector(i) is not None):
        recommender.observe(state, cat, p, ev.item_id, ev.weight, ev.ts)
        slot.held_delta -= 1
        slot.applied_held += 1
        yield from make_due(slot, ev.event_id, ev.ts, cfg, now_ms)


def forget(slot: Slot, ts: int, now_ms: int, cfg: StepConfig) -> Iterator[Output]:
    """Erase the user: the ranking still due first, then a tombstone; the state becomes a
    :class:`Forgotten` marker until ``forget_memory_ms`` from now (or nothing at all)."""
    state = slot.state
    if isinstance(state, UserState):
        if state.due is not None:
            yield Emit(take_due(state))
        slot.held_delta -= len(state.pending)
    if cfg.forget_memory_ms > 0:
        slot.state = Forgotten(ts, now_ms + cfg.forget_memory_ms)
        slot.wake_at.append(now_ms + cfg.forget_memory_ms)
    else:
        slot.state = None
    yield Tombstone()


def follow_model(state: UserState, cat: CatalogIndex, p: ModelParams, model: str) -> None:
    """Interests live in one model's vector space: after a model switch, rebuild them from the
    user's recent items in the new space (at the user's next event)."""
    if state.model != model:
        if state.model:
            recommender.rebuild_interests(state, cat, p)
        state.model = model


def show(state: UserState, ranked: Ranked, cat: CatalogIndex) -> list[dict]:
    """Remember ``ranked`` as what the user was shown (the learner's negatives at the next
    event) and return its items as the ranking record lists them."""
    state.shown = [cat.ids[r] for r in ranked.rows]
    state.shown_features, state.cooc_top = ranked.features, ranked.cooc_top
    return [{"item_id": cat.ids[r], "score": round(s, 5), "reason": why}
            for r, s, why in zip(ranked.rows, ranked.scores, ranked.reasons)]


class LocalUsers:
    """Every user's state in one process, stepped with the functions above: the driver of the
    tools that replay a stream without Flink (eval, the bench's plain loop, chaos's
    reference). ``event`` and ``tick`` return ``(user_id, output, items)`` triples, ``items``
    being the emitted list for an :class:`Emit` (else None). Due rankings of a window are
    ranked together (:func:`recommender.rank_batch`), as the Flink ranker does. With
    ``rank=False`` an :class:`Emit` is passed on unranked (the caller ranks, or not)."""

    def __init__(self, cat: CatalogIndex, p: ModelParams, cfg: StepConfig, model: str = "",
                 explain: bool = True, batch_users: int = 64, rank: bool = True):
        self.cat, self.p, self.cfg, self.model = cat, p, cfg, model
        self.explain, self.batch_users, self.rank = explain, batch_users, rank
        self.states: dict[str, Union[UserState, Forgotten]] = {}
        self.wake: dict[str, int] = {}  # user -> earliest wake-up asked for

    def state_of(self, user_id: str) -> UserState:
        """The user's state; a new user's (as their first event would create it) if none."""
        state = self.states.get(user_id)
        if not isinstance(state, UserState):
            state = self.states[user_id] = UserState.empty(self.cat.dim or 384)
            state.model = self.model
        return state

    def event(self, ev: Event, now_ms: int, cooc: Optional[np.ndarray] = None,
              stats=None) -> list:
        """Step the event's user. ``stats`` (an ``item_stats.InlineItemStats``): then apply
        the step's :class:`Interaction` to the item statistics too, as the job's item branch
        does (interactions are not returned)."""
        slot = Slot(self.states.get(ev.user_id))
        outs = list(self._run(ev.user_id, slot, on_event(
            slot, ev, self.cat, self.p, self.cfg, self.model, now_ms, cooc=cooc)))
        self._store(ev.user_id, slot)
        interactions = [o for _, o, _ in outs if isinstance(o, Interaction)]
        if stats is not None:  # after the user's step, as the broadcast reaches the ranker
            for it in interactions:
                stats.apply(it.context, it.item_id, it.type, it.weight, it.ts)
        return [o for o in outs if not isinstance(o[1], Interaction)]

    def tick(self, now_ms: int) -> list:
        """Wake every user whose time has come; their due rankings ranked together."""
        users = [u for u, t in self.wake.items() if t <= now_ms]
        ready = [u for u in users if self.rank and isinstance(self.states.get(u), UserState)
                 and self.states[u].due is not None]
        for u in ready:
            follow_model(self.states[u], self.cat, self.p, self.model)
        batch = recommender.rank_batch([(self.states[u], self.states[u].due.ts) for u in ready],
                                       self.cat, self.p, explain=self.explain,
                                       chunk=self.batch_users)
        ranked = dict(zip(ready, batch))
        outs = []
        for u in users:
            del self.wake[u]
            slot = Slot(self.states.get(u))
            outs += self._run(u, slot, on_timer(slot, self.cat, self.p, self.cfg, self.model,
                                                now_ms), ranked.pop(u, None))
            self._store(u, slot)
        return outs

    def flush(self) -> list:
        """Every due ranking now (the end of a replay)."""
        return self.tick(max(self.wake.values(), default=0))

    def _run(self, user: str, slot: Slot, outputs, ranked: Optional[Ranked] = None):
        for out in outputs:
            items = None
            if isinstance(out, Emit) and self.rank:
                r = ranked if ranked is not None else recommender.rank(
                    slot.state, self.cat, self.p, out.due.ts, explain=self.explain)
                ranked = None  # a precomputed ranking serves the first emit only
                items = show(slot.state, r, self.cat)
            yield user, out, items

    def _store(self, user: str, slot: Slot) -> None:
        if slot.state is None:
            self.states.pop(user, None)
        else:
            self.states[user] = slot.state
        if slot.wake_at:
            self.wake[user] = min([self.wake.get(user, min(slot.wake_at))] + slot.wake_at)
