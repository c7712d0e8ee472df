"""The batched scoring kernel (``recsys.scoring``, ``recsys.kernel``): the same top-k as the
one-user reference (``recommender.rank_one``) in fp32, and how far bf16 moves it."""

import dataclasses

import numpy as np
import pytest

from recsys import diversity, kernel, recommender
from recsys.catalog import CatalogIndex
from recsys.params import ModelParams
from recsys.user_state import UserState

pytestmark = pytest.mark.unit


def _catalog_and_users(seed: int = 11, n: int = 500, users: int = 37):
    rng = np.random.default_rng(seed)
    cat = CatalogIndex(32)
    for i in range(n):
        cat.upsert(f"i{i}", f"T{i}", rng.standard_normal(32).astype(np.float32))
        cat.set_popularity(f"i{i}", float(rng.normal()), float(rng.integers(1, 50)))
    for i in range(0, n, 7):
        cat.set_neighbours(f"i{i}", {f"i{(i * 3 + j) % n}": float(j + 1) for j in range(20)})
    cat.delete("i3")
    for i in range(0, n, 11):  # published during the requests (2000-2036): some not yet
        cat.upsert(f"i{i}", f"T{i}", cat.matrix[i].copy(), published_ts=1990 + i // 11)
    p = ModelParams.defaults(max_centroids=4, centroid_open_threshold=0.9,
                             kernel_precision="fp32", freshness_weight=2.0,
                             freshness_half_life_ms=10.0)
    requests = []
    for u in range(users):
        st = UserState.empty(32)
        for j in range(u % 9):  # 0..8 events; dissimilar items open up to 4 centroids
            item = f"i{int(rng.integers(0, n))}"
            recommender.observe(st, cat, p, item, 1.0, 1000 + j)
        if u % 5 == 0:
            st.weights = np.array([0.5, 1.0, 0.1, 0.2])
        requests.append((st, 2000 + u))
    return cat, p, requests


def test_batched_kernel_in_fp32_equals_the_one_user_reference():
    """Users with 0 to 4 centroids, learned weights, seen items, co-occurrence history, a
    deleted item and items published during the requests (freshness, and not ranked before
    their publication): every user's rows, reasons and scores are the reference's."""
    cat, p, requests = _catalog_and_users()
    assert {st.centroids.shape[0] for st, _ in requests} >= {0, 1, 2, 3, 4}
    alone = [recommender.rank_one(st, cat, p, ts, exact=True) for st, ts in requests]
    together = recommender.rank_batch(requests, cat, p, chunk=16)
    assert [r.rows for r in together] == [r.rows for r in alone]
    # Items published by then, fresh ones among them; none published later.
    shown = [(cat.published[r], ts) for (_, ts), rk in zip(requests, together) for r in rk.rows]
    assert all(pub <= ts for pub, ts in shown) and any(pub > 0 for pub, _ in shown)
    assert [r.reasons for r in together] == [r.reasons for r in alone]
    for a, b in zip(alone, together):
        np.testing.assert_allclose(b.scores, a.scores, rtol=1e-5, atol=1e-6)
    # A batch of one user is the same kernel.
    assert recommender.rank(requests[5][0], cat, p, requests[5][1]).rows == alone[5].rows


def test_mmr_batch_equals_mmr_for_each_user():
    rng = np.random.default_rng(3)
    rel = [rng.standard_normal(m) for m in (50, 7, 1, 0, 50, 2)]
    vec = [rng.standard_normal((len(r), 16)).astype(np.float32) for r in rel]
    vec = [v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9) for v in vec]
    rel[4][:] = 0.5  # all ties
    for lam in (0.3, 0.7, 1.0):
        assert diversity.mmr_batch(rel, vec, 10, lam) == \
            [diversity.mmr(r, v, 10, lam) for r, v in zip(rel, vec)]


def test_bf16_kernel_agrees_with_fp32(capsys):
    """bf16 rounds the vectors to 8 mantissa bits: the cosines move by ~1e-3 and a near tie
    can swap. Reported (run with -s), and bounded: at least 90% of each top-k is shared."""
    pytest.importorskip("torch")
    cat, p, requests = _catalog_and_users(seed=5, n=2000, users=64)
    fp32 = recommender.rank_batch(requests, cat, p, explain=False)
    bf16 = recommender.rank_batch(requests, cat, dataclasses.replace(
        p, kernel_precision="bf16"), explain=False)
    shared = [len(set(a.rows) & set(b.rows)) / max(len(a.rows), 1) for a, b in zip(fp32, bf16)]
    same_order = np.mean([a.rows == b.rows for a, b in zip(fp32, bf16)])
    q = np.stack([st.centroids[0] for st, _ in requests if st.has_interest])
    err = np.abs(kernel.centroid_scores(q, cat, "bf16") - kernel.centroid_scores(q, cat, "fp32"))
    with capsys.disabled():
        print(f"\nbf16 vs fp32 over {len(requests)} users: top-{p.k} shared {np.mean(shared):.3f}"
              f", same order {same_order:.3f}, max cosine error {err.max():.2e}")
    assert np.mean(shared) >= 0.9 and err.max() < 1e-2


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_grouped_scores_are_each_groups_best_row(precision):
    """``centroid_scores(..., group=g)`` (the kernel's max over each user's centroids, taken
    in the product's own layout) equals the per-row scores maximised over each run of g
    rows, C-contiguous."""
    if precision == "bf16":
        pytest.importorskip("torch")
    cat, _, _ = _catalog_and_users(seed=9, n=300, users=4)
    rng = np.random.default_rng(2)
    q = rng.standard_normal((12, cat.dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    rows = kernel.centroid_scores(q, cat, precision)
    for g in (1, 3, 4):
        got = kernel.centroid_scores(q, cat, precision, group=g)
        assert got.flags.c_contiguous and got.shape == (12 // g, cat.size)
        assert np.array_equal(got, rows.reshape(12 // g, g, cat.size).max(axis=1))


def test_auto_precision_follows_the_cpu():
    assert kernel.resolve("fp32") == "fp32" and kernel.resolve("bf16") == "bf16"
    assert kernel.resolve("auto") == ("bf16" if kernel.cpu_has_native_bf16() else "fp32")
    with pytest.raises(ValueError):
        kernel.resolve("fp8")


def test_products_on_the_kernel_thread_equal_direct_ones(monkeypatch):
    """In the TaskManager, bf16 products run on a thread of their own (``for_taskmanager``):
    the same scores as made directly, an error raised to the caller, and the thread
    reused."""
    pytest.importorskip("torch")
    cat, _, requests = _catalog_and_users(seed=3, n=300, users=8)
    q = np.stack([st.centroids[0] for st, _ in requests if st.has_interest])
    direct = kernel.centroid_scores(q, cat, "bf16")
    monkeypatch.setattr(kernel, "_offload", True)
    monkeypatch.setattr(kernel, "_thread", None)
    assert np.array_equal(kernel.centroid_scores(q, cat, "bf16"), direct)
    worker = kernel._thread
    assert worker is not None
    with pytest.raises(ZeroDivisionError):
        kernel._start(lambda: 1 / 0)()
    assert np.array_equal(kernel.centroid_scores(q, cat, "bf16"), direct)
    assert kernel._thread is worker


def test_learning_uses_the_features_the_list_was_ranked_with():
    """A ranking carries its rows' features and the user's best co-occurrence; one item's
    features computed alone on that scale equal its row of the full feature matrix."""
    cat, p, requests = _catalog_and_users()
    for st, ts in requests[8:20]:
        ranked = recommender.rank(st, cat, p, ts)
        full = recommender.features(st, cat, p, ts)
        np.testing.assert_allclose(ranked.features, full[ranked.rows], rtol=1e-5, atol=1e-6)
        for r in (0, 7, 100, 499):
            np.testing.assert_allclose(
                recommender.item_features(st, cat, p, cat.ids[r], ts, ranked.cooc_top),
                full[r], rtol=1e-5, atol=1e-6)
    # Statistics changed since the catalog-wide vectors were cached: one item's features are
    # computed from that row alone (no pass over the catalog), and still equal the full row.
    st, ts = requests[8]
    cat.set_popularity(cat.ids[3], float(cat.popularity().max()) + 2.0, 40.0)
    cooc_top = recommender.rank(st, cat, p, ts).cooc_top
    cat.set_popularity(cat.ids[5], 1.0, 3.0)
    alone = [recommender.item_features(st, cat, p, cat.ids[r], ts, cooc_top) for r in (3, 5, 9)]
    full = recommender.features(st, cat, p, ts)
    for r, got in zip((3, 5, 9), alone):
        np.testing.assert_allclose(got, full[r], rtol=1e-5, atol=1e-6)


def test_warm_up_makes_the_first_products_costs_before_a_timed_run():
    """``warm_up`` (the bench's loop, before its clock starts): one product in the resolved
    precision, so bf16's catalog copy exists before the first ranking; a no-op on an empty
    catalog."""
    kernel.warm_up(CatalogIndex(32), "bf16")
    cat, _, _ = _catalog_and_users(n=50, users=1)
    kernel.warm_up(cat, "fp32")
    assert getattr(cat, "_bf16", None) is None
    kernel.warm_up(cat, "bf16")
    assert cat._bf16[0] == (cat.vectors_version, cat.size)


def test_a_started_product_runs_while_the_caller_works_and_gives_the_same_scores(monkeypatch):
    """``start_centroid_scores`` on the kernel thread (how ``rank_batch`` overlaps the content
    product with the co-occurrence work): the caller's own numpy work in between, then the
    same scores as made directly; an error in a started product reaches whoever waits, and
    the thread serves the next product. Without the kernel thread the result is the same."""
    pytest.importorskip("torch")
    cat, _, requests = _catalog_and_users(seed=5, n=300, users=8)
    q = np.stack([st.centroids[0] for st, _ in requests if st.has_interest])
    direct = kernel.centroid_scores(q, cat, "bf16")
    assert np.array_equal(kernel.start_centroid_scores(q, cat, "bf16")(), direct)
    monkeypatch.setattr(kernel, "_offload", True)
    monkeypatch.setattr(kernel, "_thread", None)
    wait = kernel.start_centroid_scores(q, cat, "bf16")
    meanwhile = (q @ q.T).sum()  # the caller is free while the product runs
    assert np.isfinite(meanwhile)
    assert np.array_equal(wait(), direct)
    failing = kernel._start(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing()
    assert np.array_equal(kernel.start_centroid_scores(q, cat, "bf16")(), direct)
