import math

import numpy as np
import pytest

from operators.catalog import CatalogIndex
from operators.user_state import PendingEvent, UserState

pytestmark = pytest.mark.unit


def test_user_state_roundtrip_is_compact_and_exact():
    st = UserState.empty(384)
    st.vector[:] = np.linspace(-1, 1, 384, dtype=np.float32)
    st.n_events, st.last_ts = 7, 1_700_000_000_000
    st.mark_seen("a", 10)
    st.add_pending(PendingEvent("zz", -0.5, 123, "e1"), 10)
    data = st.to_bytes()
    assert len(data) < 384 * 4 + 100  # float32 bytes plus a small header/tail, no pickle
    back = UserState.from_bytes(data)
    np.testing.assert_array_equal(back.vector, st.vector)
    assert (back.n_events, back.last_ts, back.seen) == (7, st.last_ts, ["a"])
    assert back.pending == [PendingEvent("zz", -0.5, 123, "e1")]


def test_seen_is_bounded_and_recency_ordered():
    st = UserState.empty(2)
    for i in range(5):
        st.mark_seen(str(i), 3)
    st.mark_seen("2", 3)
    assert st.seen == ["3", "4", "2"]


def test_pending_is_bounded_and_drains_when_item_known():
    st = UserState.empty(2)
    assert st.add_pending(PendingEvent("x", 1.0, 1), 2)
    assert st.add_pending(PendingEvent("y", 1.0, 2), 2)
    assert not st.add_pending(PendingEvent("z", 1.0, 3), 2)
    known = {"y": np.ones(2, np.float32)}
    ready = st.drain_pending(known.get)
    assert [p.item_id for p in ready] == ["y"]
    assert [p.item_id for p in st.pending] == ["x"]


def test_apply_updates_vector_and_counts():
    st = UserState.empty(2)
    st.apply(np.array([1, 0], np.float32), 1.0, ts=1000, alpha=0.5, half_life_ms=1e9)
    np.testing.assert_allclose(st.vector, [0.5, 0])
    assert (st.n_events, st.last_ts) == (1, 1000)
    st.apply(np.array([0, 1, 0], np.float32), 1.0, ts=2000, alpha=0.5, half_life_ms=1e9)
    assert st.vector.shape == (3,)  # a new model dimension restarts the interest


def test_catalog_upsert_delete_popularity():
    cat = CatalogIndex(capacity=2)
    for i in range(5):  # grows past the initial capacity
        cat.upsert(f"i{i}", f"t{i}", np.array([i + 1.0, 1.0], np.float32))
    assert len(cat) == 5 and cat.size == 5
    assert np.linalg.norm(cat.vector("i3")) == pytest.approx(1.0)
    cat.upsert("i3", "new title", np.array([0.0, 2.0], np.float32))
    assert cat.size == 5 and cat.titles[cat.row["i3"]] == "new title"
    assert cat.delete("i1") and cat.vector("i1") is None and len(cat) == 4
    mask = cat.exclusion_mask(["i0", "unknown"])
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
