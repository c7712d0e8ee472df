"""Candidate retrieval for large catalogs: the ANN index, the candidate stage, and that
scoring candidates gives exactly the exact ranking whenever the candidates hold its items."""

import numpy as np
import pytest

from recsys import recommender
from recsys.catalog import CatalogIndex
from recsys.params import ModelParams
from recsys.retrieval import AnnIndex, nlist_for
from recsys.user_state import UserState

pytestmark = pytest.mark.unit

DIM = 32


def clustered(n: int, seed: int = 0, clusters: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def catalog(n: int, seed: int = 0) -> CatalogIndex:
    rng = np.random.default_rng(seed)
    cat = CatalogIndex(DIM)
    for i, v in enumerate(clustered(n, seed)):
        cat.upsert(f"i{i}", f"title {i}", v)
        cat.set_popularity(f"i{i}", float(rng.random() * 5), float(rng.integers(0, 50)))
    for i in range(n):
        nbrs = rng.choice(n, 20, replace=False)
        cat.set_neighbours(f"i{i}", {f"i{j}": float(rng.integers(1, 9)) for j in nbrs})
    return cat


def user(cat: CatalogIndex, p: ModelParams, n_items: int, seed: int = 1) -> UserState:
    rng = np.random.default_rng(seed)
    state = UserState.empty(DIM)
    for j in rng.choice(cat.size, n_items, replace=False):
        recommender.observe(state, cat, p, f"i{j}", float(rng.choice([1.0, 0.5, -0.5])),
                            1_000_000)
    return state


def test_ann_index_finds_the_nearest_rows_and_follows_the_catalog():
    x = clustered(4000)
    ann = AnnIndex(DIM, nprobe=nlist_for(4000))  # every list: exact
    ann.sync(x, 3000)
    assert ann.indexed == 3000
    q = x[:20]
    exact = np.argsort(-(q @ x[:3000].T), axis=1)[:, :5]
    found = ann.search(q, 5)
    assert set(exact.ravel()) <= set(found.tolist())
    ann.sync(x, 4000)  # new rows are added without re-training (less than doubled)
    assert ann.indexed == 4000 and ann.trained_on == 3000
    assert 3999 in set(ann.search(x[3999:4000], 1).tolist())
    ann.sync(x, 4000, changed=True)
    assert ann.trained_on == 4000


def test_features_of_a_slice_equal_the_full_matrix_rows():
    p = ModelParams.defaults()
    cat = catalog(500)
    state = user(cat, p, 15)
    full = recommender.features(state, cat, p, 2_000_000)
    rows = np.array([3, 7, 100, 499])
    np.testing.assert_allclose(recommender.features(state, cat, p, 2_000_000, rows=rows),
                               full[rows], rtol=1e-12)


def test_candidate_ranking_equals_exact_when_candidates_cover_the_catalog():
    cat = catalog(800)
    p = ModelParams.defaults(ann_candidates=800, popular_candidates=800, ann_nprobe=10_000,
                             kernel_precision="fp32")  # the kernel's fp32 against the reference
    for seed in range(5):
        state = user(cat, p, 12, seed)
        exact = recommender.rank(state, cat, p, 2_000_000, exact=True)
        approx = recommender.rank(state, cat, p, 2_000_000, exact=False)
        assert approx.rows == exact.rows
        assert approx.reasons == exact.reasons
        np.testing.assert_allclose(approx.scores, exact.scores, rtol=1e-6)


def test_large_catalogs_score_candidates_and_keep_recall():
    cat = catalog(6000)
    p = ModelParams.defaults(exact_max_items=5000)
    recall = []
    for seed in range(10):
        state = user(cat, p, 10, seed)
        cooc = recommender.cooc_scores(state, cat, p)
        cand = recommender.candidate_rows(state, cat, p, cooc)
        assert cand.size < cat.size  # a subset is scored...
        assert set(np.flatnonzero(cooc > 0)) <= set(cand.tolist())  # ...with every co-item
        exact = recommender.rank(state, cat, p, 2_000_000, exact=True)
        recall.append(len(set(exact.rows) & set(cand.tolist())) / len(exact.rows))
        assert len(recommender.rank(state, cat, p, 2_000_000).rows) == p.k
    assert np.mean(recall) >= 0.95, recall


def test_deleted_items_never_come_back_through_the_index():
    cat = catalog(3000)
    p = ModelParams.defaults(exact_max_items=1000)
    state = user(cat, p, 8)
    first = recommender.rank(state, cat, p, 2_000_000)
    for r in first.rows:
        cat.delete(cat.ids[r])
    second = recommender.rank(state, cat, p, 2_000_000)
    assert not set(first.rows) & set(second.rows) and len(second.rows) == p.k


def test_popular_rows_follow_statistics_updates():
    cat = catalog(300)
    before = set(cat.popular_rows(5).tolist())
    assert 0 not in before
    cat.set_popularity("i0", 1e6, 1e6)
    assert set(cat.popular_rows(5).tolist()) == before  # refreshed per 1% of the catalog...
    for _ in range(2):
        cat.set_popularity("i0", 1e6, 1e6)
    assert 0 in set(cat.popular_rows(5).tolist())  # ...of changed statistics
