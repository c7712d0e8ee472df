import math
import struct

import numpy as np
import pytest

from recsys.catalog import CatalogIndex
from recsys.user_state import Due, PendingEvent, UserState, item_keys

pytestmark = pytest.mark.unit


def test_user_state_roundtrip_is_compact_and_exact():
    st = UserState.empty(384)
    st.centroids = np.stack([np.linspace(-1, 1, 384, dtype=np.float32)] * 2)
    st.masses = np.array([1.5, 0.25], np.float32)
    st.weights = np.array([0.1, 1.0, 0.2, 0.0])
    st.n_events, st.last_ts = 7, 1_700_000_000_000
    st.mark_seen("a", 10, 5)
    st.shown = ["x", "y"]
    st.add_pending(PendingEvent("zz", -0.5, 123, "e1"), 10)
    data = st.to_bytes()
    assert len(data) < 2 * 384 * 4 + 200  # float32 bytes plus a small header/tail, no pickle
    back = UserState.from_bytes(data)
    np.testing.assert_array_equal(back.centroids, st.centroids)
    np.testing.assert_array_equal(back.masses, st.masses)
    np.testing.assert_array_equal(back.weights, st.weights)
    assert (back.n_events, back.last_ts, list(back.seen), back.history, back.shown) == \
        (7, st.last_ts, list(item_keys(["a"])), ["a"], ["x", "y"])
    assert back.pending == [PendingEvent("zz", -0.5, 123, "e1")]
    assert back.due is None
    st.due = Due(["e2", "e3"], 456)  # applied, their ranking not emitted yet
    assert UserState.from_bytes(st.to_bytes()).due == Due(["e2", "e3"], 456)
    fresh = UserState.from_bytes(UserState.empty(8).to_bytes())
    assert fresh.weights is None and not fresh.has_interest


def test_user_state_of_layout_version_2_is_still_read():
    """Savepoints written before the id lists left the JSON tail restore unchanged."""
    import json
    import struct

    c = np.ones((1, 4), np.float32) / 2
    v2 = (struct.pack("<BHBBIq", 2, 4, 1, 0, 3, 99) + c.tobytes()
          + np.array([1.0], np.float32).tobytes()
          + json.dumps({"seen": ["a", "b"], "history": ["b"], "shown": ["c"],
                        "pending": [], "model": "m"}).encode())
    st = UserState.from_bytes(v2)
    assert (list(st.seen), st.history, st.shown, st.model, st.n_events) == \
        (list(item_keys(["a", "b"])), ["b"], ["c"], "m", 3)
    np.testing.assert_array_equal(st.centroids, c)
    again = UserState.from_bytes(st.to_bytes())  # written back in the current layout
    assert (list(again.seen), again.history, again.shown, again.model) == \
        (list(item_keys(["a", "b"])), ["b"], ["c"], "m")
    assert UserState.from_bytes(UserState.empty(4).to_bytes()).seen.size == 0


def test_seen_and_history_are_bounded_and_recency_ordered():
    st = UserState.empty(2)
    for i in range(5):
        st.mark_seen(str(i), 4, 3)
    st.mark_seen("2", 4, 3)
    assert list(st.seen) == list(item_keys(["1", "3", "4", "2"]))
    assert st.history == ["3", "4", "2"]


def test_pending_is_bounded_and_drains_when_item_known():
    st = UserState.empty(2)
    assert st.add_pending(PendingEvent("x", 1.0, 1), 2)
    assert st.add_pending(PendingEvent("y", 1.0, 2), 2)
    assert not st.add_pending(PendingEvent("z", 1.0, 3), 2)
    ready = st.drain_pending(lambda item: item == "y")
    assert [p.item_id for p in ready] == ["y"]
    assert [p.item_id for p in st.pending] == ["x"]


def test_apply_interest_opens_and_moves_centroids():
    st = UserState.empty(2)
    kw = dict(max_centroids=2, open_threshold=0.5, alpha=0.3, half_life_ms=1e9)
    st.apply_interest(np.array([1, 0], np.float32), 1.0, ts=1000, **kw)
    assert st.centroids.shape == (1, 2) and (st.n_events, st.last_ts) == (1, 1000)
    st.apply_interest(np.array([0, 1], np.float32), 1.0, ts=2000, **kw)  # far: new centroid
    assert st.centroids.shape == (2, 2)
    st.apply_interest(np.array([0, 1, 0], np.float32), 1.0, ts=3000, **kw)
    assert st.centroids.shape == (1, 3)  # a new model dimension restarts the interests


def test_catalog_upsert_delete_popularity():
    cat = CatalogIndex(capacity=2)
    for i in range(5):  # grows past the initial capacity
        cat.upsert(f"i{i}", f"t{i}", np.array([i + 1.0, 1.0], np.float32))
    assert len(cat) == 5 and cat.size == 5
    assert np.linalg.norm(cat.vector("i3")) == pytest.approx(1.0)
    cat.upsert("i3", "new title", np.array([0.0, 2.0], np.float32))
    assert cat.size == 5 and cat.titles[cat.row["i3"]] == "new title"
    assert cat.delete("i1") and cat.vector("i1") is None and len(cat) == 4
    mask = cat.exclusion_mask(item_keys(["i0", "unknown"]))
    assert mask.tolist() == [True, True, False, False, False]
    cat.set_popularity("later", 3.0)  # popularity may arrive before the embedding
    cat.upsert("later", "L", np.array([1.0, 0.0], np.float32))
    assert cat.popularity()[cat.row["later"]] == 3.0
    assert cat.popularity()[0] == -math.inf


def test_catalog_rejects_wrong_dimension():
    cat = CatalogIndex()
    cat.upsert("a", "A", np.ones(3, np.float32))
    with pytest.raises(ValueError, match="dim"):
        cat.upsert("b", "B", np.ones(4, np.float32))


def test_cooccurrence_counts_pack_compactly_and_exactly():
    from recsys.item_stats import pack_counts, unpack_counts

    counts = {"1": 3.0, "café-42": 1.0, "x" * 200: 12345.0}
    data = pack_counts(counts)
    assert len(data) == 4 + 4 * 3 + len("\n".join(counts).encode("utf-8"))
    assert unpack_counts(data) == counts
    assert list(unpack_counts(data)) == list(counts)  # order kept: it breaks pruning ties
    assert unpack_counts(pack_counts({})) == {}


def test_catalog_memory_follows_the_catalog_not_the_ids_events_carry():
    """Co-occurrence with ids that are not items keeps no list under those ids (completed
    when such an id arrives), and a deleted row is taken over by the next new item."""
    cat = CatalogIndex(dim=2)
    cat.upsert("a", "A", np.array([1.0, 0.0]))
    cat.upsert("b", "B", np.array([0.0, 1.0]))
    for i in range(1000):  # junk ids in the histories of users who consumed "a"
        cat.set_cooccurrence("a", {f"junk{i}": 1.0, "b": 1.0 + i}, max_neighbours=5)
    assert set(cat.neighbours) == {"a", "b"}
    assert len(cat._waiting) <= 2 * 5, "only ids still in a half are remembered"
    cat.set_cooccurrence("a", {"late": 3.0, "b": 2.0}, max_neighbours=5)
    cat.upsert("late", "Late", np.array([1.0, 1.0]))
    assert cat.neighbours["late"] == {"a": 3.0}, "the pair is completed on arrival"
    rows = cat.size
    assert cat.delete("b") and cat.is_deleted("b")
    r = cat.upsert("c", "C", np.array([0.5, 0.5]))
    assert cat.size == rows and cat.ids[r] == "c" and "b" not in cat.row
    assert cat.vector("c") is not None and not cat.is_deleted("c") and cat.counts()[r] == 0
    assert cat.is_deleted("b"), "a deleted id is still known as deleted after its row is reused"
    cat.upsert("b", "B again", np.array([0.0, 1.0]))
    assert not cat.is_deleted("b") and cat.vector("b") is not None


def test_neighbour_arrays_patched_in_place_equal_a_rebuild():
    """Counts change at every event: the cached (rows, counts) of an item are patched in
    place, and must hold what rebuilding them from the neighbour dicts gives, each row once,
    plus only rows that left the list, at count 0. (The order within one item's arrays may
    differ: scores sum one item's parts per row, and a row is there once, so they stay
    bit-identical.)"""
    import random

    rng = random.Random(3)
    cat = CatalogIndex(dim=4)
    for i in range(30):
        cat.upsert(f"i{i}", "", np.ones(4, np.float32))
    halves: dict[str, dict[str, float]] = {}
    for step in range(3000):
        item = f"i{rng.randrange(30)}"
        earlier = halves.setdefault(item, {})
        x = f"i{rng.randrange(30)}" if rng.random() < 0.9 else f"ghost{rng.randrange(5)}"
        if x == item:
            continue
        if rng.random() < 0.1 and x in earlier:
            del earlier[x]
        else:
            earlier[x] = earlier.get(x, 0.0) + 1.0
        cat.set_cooccurrence(item, earlier, changed=[x], max_neighbours=6)
        probe = f"i{rng.randrange(30)}"
        rows, counts = (a.copy() for a in cat.neighbour_arrays(probe))
        (rows_of, counts_of), = cat.neighbour_arrays_of([probe])  # (the cached view)
        assert rows_of.tolist() == rows.tolist() and counts_of.tolist() == counts.tolist()
        cat._nbr_arrays.pop(probe)
        want = dict(zip(*(a.tolist() for a in cat.neighbour_arrays(probe))))
        assert len(set(rows.tolist())) == len(rows), step
        got = dict(zip(rows.tolist(), counts.tolist()))
        assert {r: c for r, c in got.items() if c > 0} == want, step
        assert all(r not in want for r, c in got.items() if c == 0), step


def test_interaction_records_round_trip():
    """The interactions topic's values (ranker -> item branch)."""
    from operators.codecs import pack_interaction, unpack_interaction

    for ctx in ([], ["a"], ["x1", "é2", "a b"]):
        assert unpack_interaction(pack_interaction("rating", 0.75, 123456789012, ctx)) == \
            ("rating", 0.75, 123456789012, ctx)


def test_catalog_entries_round_trip_with_and_without_a_publication_time():
    """The ranker's broadcast state of an item; an entry written before publication times
    were kept reads as published at 0."""
    from operators.codecs import pack_catalog_entry, unpack_catalog_entry

    vec = np.arange(4, dtype=np.float32)
    for title, published in (("T", 0), ("Été (1995)", 788_918_400_000), ("", 1)):
        got = unpack_catalog_entry(pack_catalog_entry(title, vec.tobytes(), published))
        assert got[0] == title and got[2] == published
        np.testing.assert_array_equal(got[1], vec)
    old = struct.pack("<I", 1) + b"T" + vec.tobytes()
    assert unpack_catalog_entry(old)[0] == "T" and unpack_catalog_entry(old)[2] == 0


def test_seen_keys_find_their_rows_after_rows_are_taken_over():
    cat = CatalogIndex(dim=2)
    for i in range(5):
        cat.upsert(f"i{i}", "", np.array([1.0, float(i)], np.float32))
    assert sorted(cat.rows_of_keys(item_keys(["i3", "i1", "nope"])).tolist()) == [1, 3]
    cat.delete("i1")
    cat.upsert("new", "", np.array([0.0, 1.0], np.float32))  # takes over i1's row
    assert cat.rows_of_keys(item_keys(["new"])).tolist() == [1]
    assert cat.rows_of_keys(item_keys(["i1"])).size == 0
