import math

import numpy as np
import pytest

from recsys import ranking

pytestmark = pytest.mark.unit

W = {"view": 0.1, "click": 0.3, "like": 0.7, "purchase": 1.0, "skip": -0.2, "dislike": -0.7}


def unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_event_weights_are_ordered_and_signed():
    w = [ranking.event_weight(t, None, W) for t in ("view", "click", "like", "purchase")]
    assert w == sorted(w) and w[0] > 0
    assert ranking.event_weight("skip", None, W) < 0
    assert ranking.event_weight("dislike", None, W) < ranking.event_weight("skip", None, W)
    assert ranking.event_weight("unknown", None, W) == 0.0


@pytest.mark.parametrize("rating,expected", [(5, 1.0), (4, 0.5), (3, 0.0), (2, -0.5), (1, -1.0),
                                             (0.5, -1.0)])
def test_rating_maps_by_value(rating, expected):
    assert ranking.event_weight("rating", rating, W) == pytest.approx(expected)


def test_decay_factor_halves_at_half_life():
    assert ranking.decay_factor(0, 1000) == 1.0
    assert ranking.decay_factor(1000, 1000) == pytest.approx(0.5)
    assert ranking.decay_factor(3000, 1000) == pytest.approx(0.125)
    assert ranking.decay_factor(-5, 1000) == 1.0


def test_positive_update_moves_towards_item_negative_away():
    u = unit([1, 0, 0])
    e = unit([0, 1, 0])
    towards = ranking.update_interest(u, e, 1.0, 0, alpha=0.5, half_life_ms=1e9)
    np.testing.assert_allclose(towards, [0.5, 0.5, 0], atol=1e-6)
    away = ranking.update_interest(u, e, -1.0, 0, alpha=0.5, half_life_ms=1e9)
    assert float(away @ e) < 0 < float(away @ u)
    assert u[0] == pytest.approx(1.0)  # input not modified


def test_repeated_negative_feedback_stays_finite():
    u = unit([1, 0])
    for _ in range(10_000):
        u = ranking.update_interest(u, unit([0.6, 0.8]), -1.0, 0, alpha=0.3, half_life_ms=1e9)
    assert np.all(np.isfinite(u)) and np.linalg.norm(u) <= 1.0 + 1e-6
    assert float(u @ unit([0.6, 0.8])) < 0  # pushed away from the disliked item


def test_old_interest_fades_with_time():
    u = unit([1, 0])
    e = unit([0, 1])
    fresh = ranking.update_interest(u, e, 1.0, dt_ms=0, alpha=0.3, half_life_ms=1000)
    stale = ranking.update_interest(u, e, 1.0, dt_ms=5000, alpha=0.3, half_life_ms=1000)
    # After a long pause the new item dominates the direction of the interest.
    assert ranking.cosine_scores(stale, e[None, :])[0] > ranking.cosine_scores(fresh,
                                                                                e[None, :])[0]


def test_cosine_scores_and_zero_user():
    items = np.stack([unit([1, 0]), unit([0, 1]), unit([1, 1])])
    s = ranking.cosine_scores(np.array([2.0, 0.0], np.float32), items)
    np.testing.assert_allclose(s, [1.0, 0.0, math.sqrt(0.5)], atol=1e-6)
    assert not ranking.cosine_scores(np.zeros(2, np.float32), items).any()


def test_top_k_orders_excludes_and_breaks_ties_by_index():
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.3])
    assert ranking.top_k(scores, 3).tolist() == [1, 3, 2]
    mask = np.array([False, True, False, False, False])
    assert ranking.top_k(scores, 3, mask).tolist() == [3, 2, 4]
    assert ranking.top_k(scores, 10).tolist() == [1, 3, 2, 4, 0]
    assert ranking.top_k(scores, 0).tolist() == []
    assert ranking.top_k(np.full(3, -np.inf), 2).tolist() == []


def test_best_rows_equals_a_full_sort_ties_at_the_boundary_included():
    """The block-bound selection gives exactly the k best of a full stable sort (score
    descending, index ascending, finite only), with many ties at the k-th score (rounded
    scores), rows at -inf or NaN, catalogs shorter than the blocks and k beyond the finite rows."""
    rng = np.random.default_rng(7)
    for trial in range(400):
        n = int(rng.integers(1, 20_000))
        s = rng.standard_normal(n)
        if trial % 2:
            s = np.round(s, 1)  # thousands of ties
        if trial % 5 == 0:
            s[rng.integers(0, n, int(rng.integers(0, n + 1)))] = -np.inf
        if trial % 7 == 0:  # NaN is never selected
            s[rng.integers(0, n, int(rng.integers(0, 20)))] = np.nan
        for k in (1, 10, 50, 300):
            order = np.lexsort((np.arange(n), -np.nan_to_num(s, nan=-np.inf)))
            expect = order[np.isfinite(s[order])][:k]
            got = ranking.best_rows(s, k)
            assert got.tolist() == expect.tolist(), (trial, n, k)

def test_popularity_log_space_matches_direct_sum():
    h = 1000.0
    lp = -math.inf
    events = [(1.0, 0), (0.5, 500), (1.0, 2000)]
    for w, ts in events:
        lp = ranking.popularity_update(lp, w, ts, h)
    t = 2500
    direct = sum(w * 2 ** (-(t - ts) / h) for w, ts in events)
    assert math.exp(lp - t * math.log(2) / h) == pytest.approx(direct)
    assert ranking.popularity_update(lp, -1.0, 3000, h) == lp


def test_recent_popularity_beats_old_popularity():
    h = 1000.0
    old = ranking.popularity_update(-math.inf, 1.0, 0, h)
    old = ranking.popularity_update(old, 1.0, 0, h)  # two interactions long ago
    new = ranking.popularity_update(-math.inf, 1.0, 5000, h)  # one, recently
    assert new > old
