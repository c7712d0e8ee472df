"""The ranker's windows, driven through a stand-in for PyFlink's keyed broadcast context
(``tests/flink_fakes.py``, no Flink): which users a window's first timer ranks together."""

from __future__ import annotations

import json

import numpy as np
import pytest

from operators.rank_users import RankUsers
from operators.types import TO_RANKINGS
from recsys import recommender
from tests.flink_fakes import FakeContext


def _ranker(ctx, items=8):
    from contracts.config import load_settings, parse_set_args

    cfg = load_settings(None, parse_set_args(["ranking.emit_window_ms=20",
                                              "ranking.kernel_precision=fp32"])).ranking
    ranker = RankUsers(cfg, "m", "events")
    ranker.clock = lambda: ctx.now  # the fake's processing time
    ranker.open(ctx)
    for i in range(items):
        vec = np.zeros(8, np.float32)
        vec[i % 8] = 1.0
        list(ranker.process_broadcast_element(
            {"kind": "item", "item_id": f"i{i}", "title": f"item {i}", "vector": vec.tobytes(),
             "model": "m", "published_ts": 0}, ctx))
    return ranker


def _event(ranker, ctx, user, item, event_id, now):
    ctx.key, ctx.now = user, now
    value = json.dumps({"user_id": user, "item_id": item, "type": "click", "ts": now,
                        "event_id": event_id}).encode()
    return list(ranker.process_element(  # an events record keyed by user (kafka_io.keyed_by_user)
        {"key": user.encode(), "value": value, "topic": "events", "partition": 0, "offset": 0,
         "ts": None, "routed_by": user}, ctx))


def _fire(ranker, ctx, until):
    out = []
    for at, key in sorted(t for t in ctx.timers if t[0] <= until):
        ctx.timers.discard((at, key))
        ctx.key, ctx.now = key, at
        out += list(ranker.on_timer(at, ctx))
    return {json.loads(r[1])["user_id"]: json.loads(r[1])["event_ids"]
            for r in out if r[2] == TO_RANKINGS}


def test_a_user_whose_window_ended_unfired_is_ranked_with_that_window(monkeypatch):
    """Backlog: a user's next event arrives after their window ended but before its timer
    fired. The user stays in that window, so its first timer ranks them with the others in
    one batch (not alone when their own timer emits), covering both events."""
    ctx = FakeContext()
    ranker = _ranker(ctx)
    _event(ranker, ctx, "u", "i1", "e1", now=1_005)
    _event(ranker, ctx, "v", "i2", "e2", now=1_006)
    _event(ranker, ctx, "u", "i3", "e3", now=1_025)  # window 1,020 ended, its timer not fired

    def alone(*args, **kwargs):
        raise AssertionError("a user of the window was ranked alone")

    monkeypatch.setattr(recommender, "rank", alone)
    batches = []
    real_batch = recommender.rank_batch
    monkeypatch.setattr(recommender, "rank_batch",
                        lambda requests, *a, **kw: batches.append(len(requests)) or
                        real_batch(requests, *a, **kw))
    assert _fire(ranker, ctx, until=1_020) == {"u": ["e1", "e3"], "v": ["e2"]}
    assert batches == [2]
    assert _fire(ranker, ctx, until=1_100) == {}  # nothing due any more


@pytest.mark.parametrize("events", [1, 3])
def test_every_event_is_covered_once_across_windows(events):
    ctx = FakeContext()
    ranker = _ranker(ctx)
    covered = []
    for w in range(4):  # events in four windows, each window's timer fired after it
        for n in range(events):
            _event(ranker, ctx, "u", f"i{(w + n) % 8}", f"e{w}.{n}", now=2_000 + 20 * w + n)
        covered += _fire(ranker, ctx, until=2_000 + 20 * w + 19).get("u", [])
    assert covered == [f"e{w}.{n}" for w in range(4) for n in range(events)]


def test_the_cooccurrence_merge_takes_a_bounded_share_of_the_rankers_time():
    """After a statistics batch, the ranker merges a slice with an event or timer only once
    the time since the last slice is at least (1 / ``_MERGE_DUTY`` - 1) times what that slice
    took (a fake clock: each slice takes 1 ms): events in between go without merging, and the
    lists end as a merge at once would leave them."""
    from operators import rank_users
    from operators.codecs import pack_stats_batch
    from recsys.item_stats import pack_counts

    clock = [1_000.0]
    ctx = FakeContext()
    ranker = _ranker(ctx)
    ranker.merge_clock = lambda: clock[0]
    ranker.mirror.slice_pairs = 7  # one item's 7 entries a slice
    slices = []
    real_merge = ranker.mirror.merge_some

    def merge_some(everything=False):
        slices.append(everything)
        clock[0] += 0.001
        real_merge(everything)

    ranker.mirror.merge_some = merge_some
    ids = [f"i{i}" for i in range(8)]
    halves = {x: {y: float(1 + (n + j) % 3) for j, y in enumerate(ids) if y != x}
              for n, x in enumerate(ids)}
    batch = pack_stats_batch([(x, 1.0, 2.0, pack_counts(halves[x]), None) for x in ids])
    _event(ranker, ctx, "u", "i1", "e0", now=1_000)  # an event just now: not idle
    list(ranker.process_broadcast_element({"kind": "stats", "neighbours": batch}, ctx))
    assert ranker.mirror.merge_backlog == 7, "one slice as the batch arrives"
    slices.clear()
    _event(ranker, ctx, "u", "i2", "e1", now=1_001)  # merges: nothing paced yet
    _event(ranker, ctx, "u", "i3", "e2", now=1_002)  # 1 ms of merging just now: waits
    assert slices == [False] and ranker.mirror.merge_backlog == 6
    wait = 0.001 * (1 / rank_users._MERGE_DUTY - 1)
    clock[0] += wait * 0.9
    _event(ranker, ctx, "u", "i4", "e3", now=1_003)
    assert len(slices) == 1, "still within the merge's share"
    clock[0] += wait * 0.2
    _event(ranker, ctx, "u", "i5", "e4", now=1_004)
    assert len(slices) == 2 and ranker.mirror.merge_backlog == 5
    for n in range(20):  # later events and timers, each after a long pause: all merged
        clock[0] += 1.0
        if n % 2:
            _fire(ranker, ctx, until=ctx.now + 20)
        else:
            _event(ranker, ctx, "v", "i6", f"f{n}", now=ctx.now + 1)
    assert not ranker.mirror.merge_backlog and len(slices) == 7
    for x in ids:
        assert ranker.catalog.neighbours[x] == {y: halves[x][y] + halves[y][x]
                                                for y in ids if y != x}


def _records(user, events, now):
    """Events-topic records of ``user`` (``kafka_io.keyed_by_user``'s fields); ``events``:
    (item, event_id) pairs, or raw bytes for a record that is not a valid event."""
    out = []
    for n, e in enumerate(events):
        value = e if isinstance(e, bytes) else json.dumps(
            {"user_id": user, "item_id": e[0], "type": "click", "ts": now + n,
             "event_id": e[1]}).encode()
        out.append({"key": user.encode(), "value": value, "topic": "events", "partition": 3,
                    "offset": 100 + n, "ts": None, "routed_by": user})
    return out


def test_a_batch_of_a_users_records_is_stepped_as_if_they_came_one_by_one():
    """``flink.event_batch_ms``: the ranker is handed one user's records as a batch (a row
    of per-field arrays, ``kafka_io.keyed_by_user``). It must emit what the same records sent
    one by one emit: the same interactions and dead letters in the same order, the same
    rankings covering the same events, and leave the same state and timers."""
    from pyflink.common import Row

    from operators.parse import event_records

    events = [("i1", "e1"), ("i2", "e2"), b"not json", ("i3", "e3"), ("i1", "e4")]
    records = _records("u", events, now=3_001)
    batch = Row(key=tuple(r["key"] for r in records), value=tuple(r["value"] for r in records),
                topic="events", partition=tuple(r["partition"] for r in records),
                offset=tuple(r["offset"] for r in records), ts=(None,) * len(records),
                routed_by="u")
    assert event_records(batch) == records
    outputs = []
    for given in ("one by one", "batch"):
        ctx = FakeContext()
        ranker = _ranker(ctx)
        ctx.key, ctx.now = "u", 3_005
        elements = records if given == "one by one" else [batch]
        out = [r for element in elements for r in ranker.process_element(element, ctx)]
        state, timers = ctx.store["u"], set(ctx.timers)
        out += [r for at, key in sorted(timers) for r in ranker.on_timer(at, ctx)]
        rankings = [json.loads(r[1]) for r in out if len(r) == 3 and r[2] == TO_RANKINGS]
        outputs.append(([repr(r) for r in out if "emitted_ts" not in repr(r)],
                        [(r["event_ids"], r["items"]) for r in rankings], state, timers))
    assert outputs[0] == outputs[1]
    texts, rankings, _, _ = outputs[1]
    assert [ids for ids, _ in rankings] == [["e1", "e2", "e3", "e4"]] and rankings[0][1]
    assert sum("not_json" in t for t in texts) == 1 and sum("i1" in t for t in texts) >= 2
