"""The item branch's batched broadcast: its codec, and a batch applied to the rankers'
catalog mirror (plain Python: a stand-in for PyFlink's broadcast state, no Flink)."""

from __future__ import annotations

import numpy as np

from operators.catalog_mirror import CatalogMirror
from operators.codecs import STATS, pack_stats_batch, unpack_stats_batch
from operators.types import NEIGHBOURS_STATE, POPULARITY_STATE
from recsys.item_stats import pack_counts, unpack_counts
from tests.flink_fakes import FakeContext


def test_a_batch_round_trips_with_and_without_counts():
    entries = [("m1", 1.5, 3.0, pack_counts({"m2": 2.0, "é-3": 1.0}), pack_counts({"m2": 2.0})),
               ("é-3", -2.25, 1.0, None, None),
               ("x" * 256, 0.0, 7.0, pack_counts({}), None)]
    got = unpack_stats_batch(pack_stats_batch(entries))
    assert [e[:3] for e in got] == [e[:3] for e in entries]
    assert unpack_counts(got[0][3]) == {"m2": 2.0, "é-3": 1.0}
    assert unpack_counts(got[0][4]) == {"m2": 2.0}
    assert got[1][3] is None and got[1][4] is None
    assert unpack_counts(got[2][3]) == {} and got[2][4] is None
    assert unpack_stats_batch(pack_stats_batch([])) == []


def _mirror_with(ids, slice_pairs: int = 0):
    mirror, ctx = CatalogMirror("m", max_neighbours=10, slice_pairs=slice_pairs), FakeContext()
    for i, item_id in enumerate(ids):
        vec = np.zeros(8, np.float32)
        vec[i % 8] = 1.0
        mirror.apply({"kind": "item", "item_id": item_id, "title": item_id,
                      "vector": vec.tobytes(), "model": "m", "published_ts": 0}, ctx)
    return mirror, ctx


def test_a_batch_reaches_the_catalog_and_broadcast_state_in_one_call_per_state():
    mirror, ctx = _mirror_with(["a", "b", "c"])
    batch = pack_stats_batch([("a", 2.0, 4.0, pack_counts({"b": 3.0}), None),
                              ("b", 1.0, 2.0, None, None),
                              ("junk", 9.0, 9.0, pack_counts({"a": 1.0}), None)])
    calls = ctx.calls
    mirror.apply({"kind": "stats", "item_id": "", "neighbours": batch}, ctx)
    cat = mirror.catalog
    assert cat.counts()[cat.row["a"]] == 4.0 and cat.popularity()[cat.row["b"]] == 1.0
    assert cat.neighbours["a"] == {"b": 3.0} and cat.neighbours["b"] == {"a": 3.0}
    assert "junk" not in cat.row and "junk" not in ctx.states[POPULARITY_STATE.name]
    assert STATS.unpack(ctx.states[POPULARITY_STATE.name]["a"]) == (2.0, 4.0)
    assert set(ctx.states[NEIGHBOURS_STATE.name]) == {"a"}
    assert ctx.calls - calls <= 2  # the state handles are asked for once, then kept
    mirror.apply({"kind": "stats", "item_id": "",
                  "neighbours": pack_stats_batch([("c", 0.5, 1.0, None, None)])}, ctx)
    assert ctx.calls - calls <= 2


def test_a_large_batch_is_merged_a_slice_at_a_time_to_the_same_lists():
    """With ``slice_pairs``, a batch's co-occurrence is merged about that many entries per
    call (popularity and broadcast state at once); once all is merged the lists are those of
    a merge at once, and a catalog change first merges everything received before it."""
    ids = [f"i{n}" for n in range(12)]
    halves = [pack_counts({y: float(1 + (n + j) % 3) for j, y in enumerate(ids) if y != x})
              for n, x in enumerate(ids)]
    batch = pack_stats_batch([(x, 1.0, 2.0, h, None) for x, h in zip(ids, halves)])
    at_once, ctx = _mirror_with(ids)
    at_once.apply({"kind": "stats", "neighbours": batch}, ctx)
    sliced, ctx2 = _mirror_with(ids, slice_pairs=20)  # 11 entries per item: 2 items a call
    sliced.apply({"kind": "stats", "neighbours": batch}, ctx2)
    assert sliced.merge_backlog == 10 and len(sliced.catalog.earlier) == 2
    assert sliced.catalog.counts()[sliced.catalog.row["i11"]] == 2.0, "popularity at once"
    assert set(ctx2.states[NEIGHBOURS_STATE.name]) == set(ids), "all of it in state at once"
    calls = 0
    while sliced.merge_backlog:
        sliced.merge_some()
        calls += 1
    assert calls == 5
    for x in ids:
        assert sliced.catalog.neighbours[x] == at_once.catalog.neighbours[x]
    sliced.apply({"kind": "stats", "neighbours": batch}, ctx2)
    assert sliced.merge_backlog
    vec = np.zeros(8, np.float32)
    sliced.apply({"kind": "item", "item_id": "new", "title": "new", "vector": vec.tobytes(),
                  "model": "m", "published_ts": 0}, ctx2)
    assert not sliced.merge_backlog, "merged before the catalog changed"


def test_changed_entries_merge_into_the_half_the_ranker_holds():
    """A send with its changes updates the half in place (an entry at 0 leaves it) and gives
    the neighbour lists a whole send would; without a half to change, the whole is used."""
    whole = {"b": 2.0, "c": 1.0}
    after = {"b": 3.0, "d": 1.0}  # b counted again, d new, c pruned
    changes = pack_counts({"b": 3.0, "c": 0.0, "d": 1.0})
    merged, ctx = _mirror_with(["a", "b", "c", "d"])
    merged.apply({"kind": "stats", "neighbours": pack_stats_batch(
        [("a", 1.0, 2.0, pack_counts(whole), None)])}, ctx)
    half = merged.catalog.earlier["a"]
    merged.apply({"kind": "stats", "neighbours": pack_stats_batch(
        [("a", 1.0, 3.0, pack_counts(after), changes)])}, ctx)
    assert merged.catalog.earlier["a"] is half and half == after
    direct, ctx2 = _mirror_with(["a", "b", "c", "d"])
    direct.apply({"kind": "stats", "neighbours": pack_stats_batch(  # no half yet: the whole
        [("a", 1.0, 3.0, pack_counts(after), changes)])}, ctx2)
    for cat in (merged.catalog, direct.catalog):
        assert cat.earlier["a"] == after
        assert cat.neighbours["a"] == after
        assert cat.neighbours["b"] == {"a": 3.0} and cat.neighbours["d"] == {"a": 1.0}
        assert "a" not in cat.neighbours.get("c", {})
        rows, counts = cat.neighbour_arrays("a")
        assert dict(zip([cat.ids[r] for r in rows], counts.tolist())) == after
    assert unpack_counts(ctx.states[NEIGHBOURS_STATE.name]["a"]) == after


# -- the item branch's outbox, timers and restore (a FakeContext: PyFlink's keyed context) --

def _branch(keyed, interval_ms=1000, nbrs_ms=5000, max_neighbours=200):
    from contracts.config import load_settings, parse_set_args
    from operators.item_branch import ItemBranch

    cfg = load_settings(None, parse_set_args([
        f"ranking.popularity_emit_interval_ms={interval_ms}",
        f"ranking.neighbours_emit_interval_ms={nbrs_ms}",
        f"ranking.max_neighbours={max_neighbours}"])).ranking
    branch = ItemBranch(cfg)
    branch.open(keyed)
    return branch


def _known(branch, keyed, item_id):
    keyed.key = item_id
    return list(branch.process_element2({"deleted": False}, keyed))


def _interaction(branch, keyed, item_id, context=(), ts=1_000):
    from operators.codecs import pack_interaction

    keyed.key = item_id
    return list(branch.process_element1(  # (key, value, topic, partition, offset, routed_by)
        (item_id.encode(), pack_interaction("click", 1.0, ts, list(context)), "interactions", 0,
         0, item_id), keyed))


def _fire(branch, keyed, until):
    """Fire the timers due by ``until`` in time order, those they register included."""
    out = []
    while any(at <= until for at, _ in keyed.timers):
        at, key = min(t for t in keyed.timers if t[0] <= until)
        keyed.timers.discard((at, key))
        keyed.key = key
        out += list(branch.on_timer(at, keyed))
    return [unpack_stats_batch(row[6]) for row in out]


def test_one_batch_per_interval_carries_every_changed_item(monkeypatch):
    import operators.item_branch as ib

    keyed = FakeContext()
    branch = _branch(keyed)
    for item_id in ("a", "b", "c"):
        assert _known(branch, keyed, item_id) == []  # no interactions yet: nothing to send
    monkeypatch.setattr(ib, "now_ms", lambda: 10_100)
    assert _interaction(branch, keyed, "a") == []
    assert _interaction(branch, keyed, "b", context=["a"]) == []
    assert _interaction(branch, keyed, "a", context=["b"]) == []
    batches = _fire(branch, keyed, until=11_000)
    assert len(batches) == 1  # three timers (a, b at 11,000), one batch
    sent = {i: (lp, c, cnt, changes) for i, lp, c, cnt, changes in batches[0]}
    assert set(sent) == {"a", "b"} and sent["a"][1] == 2.0 and sent["b"][1] == 1.0
    assert unpack_counts(sent["a"][2]) == {"b": 1.0} and unpack_counts(sent["b"][2]) == {"a": 1.0}
    assert sent["a"][3] is None and sent["b"][3] is None  # first sends: whole only
    # Counts changed again within neighbours_emit_interval_ms: the statistics go out at the
    # next boundary, the counts wait until 5 s after they were last sent.
    monkeypatch.setattr(ib, "now_ms", lambda: 11_500)
    _interaction(branch, keyed, "a", context=["c"])
    first = _fire(branch, keyed, until=12_000)
    assert [(i, c, cnt) for i, _, c, cnt, _ in first[0]] == [("a", 3.0, None)]
    later = [b for b in _fire(branch, keyed, until=16_000) if b]
    assert len(later) == 1 and later[0][0][0] == "a"
    assert unpack_counts(later[0][0][3]) == {"b": 1.0, "c": 1.0}
    assert unpack_counts(later[0][0][4]) == {"c": 1.0}  # what changed since the last send
    assert not branch._outbox and not _fire(branch, keyed, until=60_000)


def test_after_a_restore_the_timers_resend_what_the_lost_outbox_held(monkeypatch):
    import operators.item_branch as ib

    keyed = FakeContext()
    branch = _branch(keyed)
    for item_id in ("a", "b"):
        _known(branch, keyed, item_id)
    monkeypatch.setattr(ib, "now_ms", lambda: 20_200)
    _interaction(branch, keyed, "a")
    _interaction(branch, keyed, "b", context=["a"])
    # The job fails here: state and timers come back from the checkpoint, the outbox does not.
    restored = keyed.restored()
    branch = _branch(restored)
    # b is counted again before its timer: it is in the new outbox, with this change only;
    # its counts still go whole (the rankers may lack what the lost outbox held).
    monkeypatch.setattr(ib, "now_ms", lambda: 20_500)
    _interaction(branch, restored, "b", context=["z"])
    batches = _fire(branch, restored, until=21_000)
    sent = {i: (c, cnt, changes) for batch in batches for i, _, c, cnt, changes in batch}
    assert sent["a"][0] == 1.0 and sent["b"][0] == 2.0
    assert unpack_counts(sent["b"][1]) == {"a": 1.0, "z": 1.0} and sent["b"][2] is None


def test_one_timer_per_boundary_and_a_backstop_per_item_that_resends_after_a_restore(
        monkeypatch):
    """A boundary has one timer (not one per item queued for it), and each queued item one
    backstop timer, at its own time: in normal operation the backstop sends nothing; after
    a restore, an item that was waiting in the lost outbox, whose boundary timer was another
    item's, is sent by its backstop."""
    import operators.item_branch as ib

    keyed = FakeContext()
    branch = _branch(keyed)
    for item_id in ("a", "b", "c"):
        _known(branch, keyed, item_id)
    monkeypatch.setattr(ib, "now_ms", lambda: 30_200)
    for item_id in ("a", "b", "c"):
        _interaction(branch, keyed, item_id)
    boundary = [t for t in keyed.timers if t[0] == 31_000]
    backstops = sorted(t for t in keyed.timers if t[0] == 30_200 + ib._BACKSTOP_MS)
    assert len(boundary) == 1 and backstops == [(40_200, "a"), (40_200, "b"), (40_200, "c")]
    timers = set(keyed.timers)
    assert [sorted(i for i, *_ in batch) for batch in _fire(branch, keyed, until=31_000)] == \
        [["a", "b", "c"]]
    assert _fire(branch, keyed, until=50_000) == []  # backstops: all sent, nothing again
    # The same, failing before the boundary: state and timers back, the outbox not.
    restored = keyed.restored(timers)
    branch = _branch(restored)
    monkeypatch.setattr(ib, "now_ms", lambda: 30_500)
    _interaction(branch, restored, "a")  # a again: queued by the new instance
    first = _fire(branch, restored, until=31_000)
    assert [sorted(i for i, *_ in batch) for batch in first] == [["a"]]  # a's timer only
    rest = _fire(branch, restored, until=41_000)  # b and c: their backstops
    assert sorted(i for batch in rest for i, *_ in batch) == ["b", "c"]
    assert not branch._outbox


def test_interval_zero_sends_every_interaction_at_once(monkeypatch):
    import operators.item_branch as ib

    keyed = FakeContext()
    branch = _branch(keyed, interval_ms=0, nbrs_ms=0)
    _known(branch, keyed, "a")
    monkeypatch.setattr(ib, "now_ms", lambda: 5_000)
    rows = _interaction(branch, keyed, "a", context=["z"])
    [(item_id, _, count, counts, _)] = unpack_stats_batch(rows[0][6])
    assert (item_id, count, unpack_counts(counts)) == ("a", 1.0, {"z": 1.0})
    assert not keyed.timers


def _state_record(keyed, item_id, max_neighbours=200):
    """The record a branch that has not kept it reads from the state (value and log)."""
    reader = _branch(keyed.restored(), max_neighbours=max_neighbours)
    reader_ctx = reader.state  # (the FakeContext: one object for the keyed state)
    reader_ctx.key = item_id
    return reader._read(item_id)


def test_the_records_kept_in_memory_are_the_state(monkeypatch):
    """The branch reads an item's record from memory, never its state, once it has it; what
    it keeps must be what the state holds (the record written whole and the interactions
    logged since), deletions and evictions included."""
    import operators.item_branch as ib

    monkeypatch.setattr(ib, "_RECORDS_KEPT", 2)
    monkeypatch.setattr(ib, "now_ms", lambda: 30_100)
    keyed = FakeContext()
    branch = _branch(keyed)
    for item_id in ("a", "b", "c"):
        _known(branch, keyed, item_id)
    for item_id, context in (("a", ["b"]), ("b", ["a"]), ("c", ["a"]), ("a", ["c"])):
        _interaction(branch, keyed, item_id, context)
    assert len(branch._records) == 2  # the first kept went
    for item_id, rec in branch._records.items():
        assert _state_record(keyed, item_id) == rec
    assert _state_record(keyed, "a").earlier == {"b": 1.0, "c": 1.0}
    assert len(keyed.lists["a"]) == 2  # two interactions appended, the record not rewritten
    keyed.key = "c"
    list(branch.process_element2({"deleted": True}, keyed))
    assert "c" not in keyed.store and "c" not in keyed.lists and "c" not in branch._records
    _interaction(branch, keyed, "c", ["b"])  # counted afresh, not from the dropped record
    assert branch._records["c"].earlier == {"b": 1.0} and branch._records["c"].count == 1.0


def test_an_items_log_is_written_whole_when_full_and_replays_to_the_same_record(monkeypatch):
    """Interactions are appended to the item's log; the one after _LOG_MAX writes the record
    whole and empties the log; a branch restored from any point reads the record the
    running one holds, pruning of the counts included (max_neighbours 2: pruned past 4)."""
    import operators.item_branch as ib

    monkeypatch.setattr(ib, "now_ms", lambda: 40_100)
    keyed = FakeContext()
    branch = _branch(keyed, max_neighbours=2)
    _known(branch, keyed, "a")
    whole = keyed.store["a"]
    for i in range(ib._LOG_MAX + 3):
        _interaction(branch, keyed, "a", [f"n{i % 5}", f"m{i}"], ts=1_000 + i)
        logged = (i + 1) if i < ib._LOG_MAX else i - ib._LOG_MAX
        assert len(keyed.lists.get("a", ())) == logged
        assert (keyed.store["a"] == whole) == (i < ib._LOG_MAX)  # rewritten when full
        assert _state_record(keyed, "a", max_neighbours=2) == branch._records["a"]
    rec = branch._records["a"]
    assert rec.count == ib._LOG_MAX + 3 and len(rec.earlier) <= 4
