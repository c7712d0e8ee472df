"""The per-event step (recsys/user_step.py) without Flink: held events, dead letters, forget,
model switch, coalesced and per-event rankings."""

import dataclasses

import numpy as np
import pytest

from contracts.messages import Event
from recsys.catalog import CatalogIndex
from recsys.params import ModelParams
from recsys.user_state import Forgotten, UserState, item_keys
from recsys.user_step import (Emit, Interaction, LocalUsers, Reject, Slot, StepConfig,
                              Tombstone, on_event, on_timer, window_end)

pytestmark = pytest.mark.unit

CFG = StepConfig(emit_window_ms=20, max_covered_events=4, pending_retry_ms=500,
                 pending_timeout_ms=10_000, forget_memory_ms=60_000)
P = ModelParams.defaults(max_pending=2)


def catalog(n: int = 12, dim: int = 16, seed: int = 0) -> CatalogIndex:
    rng = np.random.default_rng(seed)
    cat = CatalogIndex(dim=dim)
    for i in range(n):
        cat.upsert(f"i{i}", f"title {i}", rng.standard_normal(dim).astype(np.float32))
    return cat


def ev(item: str, n: int, kind: str = "click", user: str = "u", ts: int = 0) -> Event:
    return Event(user, item, kind, ts or 1_000 + n, None, f"e{n}", 0, n)


def step(slot, e, cat, cfg=CFG, now=100, model="m"):
    """The step's outputs but the interactions (see the interactions test)."""
    return [o for o in on_event(slot, e, cat, P, cfg, model, now)
            if not isinstance(o, Interaction)]


def test_consumed_items_go_out_as_interactions_with_the_history_before_them():
    """Known or held, a consumption goes to the item statistics with the user's recent items
    before it; a skip (a negative) and a deleted item's event do not."""
    cat, slot = catalog(), Slot(None)
    outs = [list(on_event(slot, e, cat, P, CFG, "m", 100))
            for e in (ev("i1", 1), ev("i2", 2), ev("zz", 3), ev("i4", 4, kind="skip"))]
    got = [[o for o in out if isinstance(o, Interaction)] for out in outs]
    assert [(i.item_id, i.context) for g in got for i in g] == \
        [("i1", []), ("i2", ["i1"]), ("zz", ["i1", "i2"])]
    cat.delete("i5")
    assert not [o for o in on_event(slot, ev("i5", 5), cat, P, CFG, "m", 100)
                if isinstance(o, Interaction)]


def test_events_coalesce_into_one_ranking_per_window():
    cat, slot = catalog(), Slot(None)
    assert step(slot, ev("i1", 1), cat) == []
    assert slot.new_user and slot.wake_at == [window_end(100, 20)] == [120]
    assert step(slot, ev("i2", 2), cat, now=105) == []
    assert slot.state.due.event_ids == ["e1", "e2"] and slot.state.due.ts == 1002
    outs = list(on_timer(slot, cat, P, CFG, "m", 120))
    assert [type(o) for o in outs] == [Emit] and outs[0].due.event_ids == ["e1", "e2"]
    assert slot.state.due is None and list(slot.state.seen) == list(item_keys(["i1", "i2"]))


def test_a_ranking_covers_at_most_max_covered_events():
    cat, slot = catalog(), Slot(None)
    outs = [o for n in range(6) for o in step(slot, ev(f"i{n}", n), cat)]
    assert [o.due.event_ids for o in outs] == [["e0", "e1", "e2", "e3"]]
    assert slot.state.due.event_ids == ["e4", "e5"]


def test_per_event_mode_ranks_every_event_at_once():
    cat, slot = catalog(), Slot(None)
    outs = [o for n in range(3) for o in step(slot, ev(f"i{n}", n), cat, cfg=CFG.per_event())]
    assert [o.due.event_ids for o in outs] == [["e0"], ["e1"], ["e2"]]
    assert slot.state.due is None and slot.wake_at == []


def test_a_held_event_is_applied_when_its_item_arrives_and_overflow_is_a_dead_letter():
    cat, slot = catalog(), Slot(None)
    assert step(slot, ev("new-a", 1), cat) == [] and step(slot, ev("new-b", 2), cat) == []
    assert slot.held_delta == 2 and slot.wake_at == [100 + CFG.pending_retry_ms]
    over = step(slot, ev("new-c", 3), cat)
    assert [(type(o), o.reason, o.event.event_id) for o in over] == \
        [(Reject, "pending_overflow", "e3")]
    cat.upsert("new-a", "arrived", np.ones(16, np.float32))
    slot = Slot(slot.state)
    outs = list(on_timer(slot, cat, P, CFG.per_event(), "m", 700))
    assert [o.due.event_ids for o in outs] == [["e1"]]
    assert slot.applied_held == 1 and [h.item_id for h in slot.state.pending] == ["new-b"]
    assert slot.state.has_seen("new-a") and slot.wake_at == [700 + CFG.pending_retry_ms]


def test_held_events_time_out_or_die_with_their_item():
    cat, slot = catalog(), Slot(None)
    step(slot, ev("late", 1), cat, now=100)
    step(slot, ev("gone", 2), cat, now=5_000)
    cat.upsert("gone", "x", np.ones(16, np.float32))
    cat.delete("gone")
    slot = Slot(slot.state)
    outs = list(on_timer(slot, cat, P, CFG, "m", 10_200))
    assert sorted((o.reason, o.event.event_id) for o in outs) == \
        [("item_deleted", "e2"), ("unknown_item", "e1")]
    assert slot.state.pending == [] and slot.held_delta == -2 and slot.wake_at == []


def test_deleted_items_are_refused():
    cat, slot = catalog(), Slot(None)
    cat.delete("i3")
    outs = step(slot, ev("i3", 1), cat)
    assert [(o.reason, o.event.event_id) for o in outs] == [("item_deleted", "e1")]


def test_forget_emits_the_due_ranking_then_a_tombstone_and_refuses_older_events():
    cat, slot = catalog(), Slot(None)
    step(slot, ev("i1", 1, ts=1_000), cat)
    outs = step(slot, Event("u", "", "forget_user", 2_000), cat, now=150)
    assert [type(o) for o in outs] == [Emit, Tombstone] and outs[0].due.event_ids == ["e1"]
    assert slot.state == Forgotten(2_000, 150 + CFG.forget_memory_ms)
    late = step(slot, ev("i2", 2, ts=1_500), cat)
    assert [(o.reason) for o in late] == ["user_forgotten"]
    fresh = Slot(slot.state)
    assert step(fresh, ev("i2", 3, ts=2_500), cat) == []
    assert fresh.new_user and fresh.state.n_events == 1
    assert list(fresh.state.seen) == list(item_keys(["i2"]))
    gone = Slot(slot.state)
    list(on_timer(gone, cat, P, CFG, "m", 150 + CFG.forget_memory_ms))
    assert gone.state is None


def test_a_model_switch_rebuilds_interests_in_the_new_space():
    cat, slot = catalog(), Slot(None)
    for n in range(3):
        step(slot, ev(f"i{n}", n, "like"), cat, cfg=CFG.per_event(), model="old")
    before = slot.state.centroids.copy()
    other = catalog(seed=1)  # the same ids, other vectors: another model's space
    step(slot, ev("i5", 9, "like"), other, cfg=CFG.per_event(), model="new")
    assert slot.state.model == "new"
    assert not np.allclose(slot.state.centroids[: before.shape[0]], before)


def test_local_users_rank_a_window_together_and_equal_ranking_each_alone():
    cat, p = catalog(40), dataclasses.replace(P, learning_rate=0.0)  # no learning from shown
    users = LocalUsers(cat, p, CFG, "m", explain=False)
    alone = LocalUsers(cat, p, CFG.per_event(), "m", explain=False)
    for n in range(12):
        e = ev(f"i{n}", n, user=f"u{n % 5}")
        assert users.event(e, 100) == []
        alone.event(dataclasses.replace(e, event_id=f"x{n}"), 100)
    outs = users.tick(120)
    assert sorted(u for u, _, _ in outs) == [f"u{i}" for i in range(5)]
    for user, out, items in outs:
        assert isinstance(out, Emit) and [i["item_id"] for i in items] == alone.states[user].shown
        assert users.states[user].due is None
    assert users.tick(10_000) == []  # nothing due any more


def test_state_bytes_keep_a_due_ranking():
    cat, slot = catalog(), Slot(None)
    step(slot, ev("i1", 1), cat)
    step(slot, ev("i2", 2), cat)
    back = UserState.from_bytes(slot.state.to_bytes())
    assert back.due == slot.state.due
