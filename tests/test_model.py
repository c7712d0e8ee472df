"""The ranking model's pure parts: interests, co-occurrence, fusion learning, MMR, metrics."""

import dataclasses
import math

import numpy as np
import pytest

from recsys import diversity, fusion, interests, item_stats, metrics, recommender
from recsys.catalog import CatalogIndex
from recsys.params import ModelParams
from recsys.user_state import UserState

pytestmark = pytest.mark.unit

KW = dict(max_centroids=2, open_threshold=0.5, alpha=0.3, half_life_ms=1e12)


def unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def test_centroids_open_move_replace_and_push_away():
    c, m = np.zeros((0, 2), np.float32), np.zeros(0, np.float32)
    c, m = interests.update_centroids(c, m, unit([1, 0]), 1.0, 0, **KW)
    c, m = interests.update_centroids(c, m, unit([1, 0.2]), 1.0, 0, **KW)  # near: moves
    assert c.shape == (1, 2) and m[0] == pytest.approx(2.0) and c[0, 1] > 0
    c, m = interests.update_centroids(c, m, unit([0, 1]), 0.5, 0, **KW)  # far: opens
    assert c.shape == (2, 2)
    c, m = interests.update_centroids(c, m, unit([-1, -1]), 1.0, 0, **KW)  # full: replaces
    assert c.shape == (2, 2) and np.any(c @ unit([-1, -1]) > 0.99)
    assert m.min() >= 0.99  # the light centroid (0.5) was the one replaced
    before = c.copy()
    c2, m2 = interests.update_centroids(c, m, unit([-1, -1]), -0.5, 0, **KW)  # pushed away
    assert float((c2 @ unit([-1, -1])).max()) < float((before @ unit([-1, -1])).max())
    np.testing.assert_allclose(np.linalg.norm(c2, axis=1), 1.0, atol=1e-5)


def test_content_score_is_best_centroid():
    cents = np.stack([unit([1, 0]), unit([0, 1])])
    items = np.stack([unit([1, 0]), unit([0, 1]), unit([-1, 0])])
    np.testing.assert_allclose(interests.content_scores(cents, items), [1, 1, 0], atol=1e-6)
    assert not interests.content_scores(np.zeros((0, 2), np.float32), items).any()


def test_pairwise_update_prefers_the_engaged_item_and_stays_near_prior():
    prior = np.array([1.0, 1.0])
    w = prior.copy()
    pos, neg = np.array([1.0, 0.0]), np.array([[0.0, 1.0]])
    for _ in range(50):
        w = fusion.pairwise_update(w, pos, neg, lr=0.1, l2=0.1, prior=prior)
    assert w[0] > prior[0] and w[1] < prior[1]
    assert np.all(np.abs(w - prior) < 5)  # regularised
    assert np.array_equal(fusion.pairwise_update(w, pos, np.zeros((0, 2)), 0.1, 0.1), w)


def test_mmr_limits():
    rel = np.array([1.0, 0.99, 0.5])
    vecs = np.stack([unit([1, 0]), unit([1, 0.01]), unit([0, 1])])
    assert diversity.mmr(rel, vecs, 2, 1.0) == [0, 1]  # pure relevance
    assert diversity.mmr(rel, vecs, 2, 0.5) == [0, 2]  # the near-duplicate gives way
    assert diversity.mmr(rel, vecs, 5, 0.3) == [0, 2, 1]
    assert diversity.mmr(rel[:0], vecs[:0], 3, 0.5) == []


def test_mmr_matches_the_textbook_greedy_rule():
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((40, 16))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    rel = rng.random(40)
    lam = 0.7
    norm = (rel - rel.min()) / (rel.max() - rel.min())
    want: list[int] = []
    for _ in range(10):  # argmax of lam*rel - (1-lam)*max sim to the chosen (0 at first)
        best, best_v = -1, -np.inf
        for i in range(40):
            if i in want:
                continue
            pen = max((float(vecs[i] @ vecs[j]) for j in want), default=0.0)
            v = lam * norm[i] - (1 - lam) * pen
            if v > best_v:
                best, best_v = i, v
        want.append(best)
    assert diversity.mmr(rel, vecs, 10, lam) == want


def test_metrics_worked_examples():
    ranked = ["a", "b", "c"]
    assert metrics.hit_at_k(ranked, "a", 3) == 1.0
    assert metrics.hit_at_k(ranked, "c", 2) == 0.0
    assert metrics.ndcg_at_k(ranked, "a", 3) == 1.0
    assert metrics.ndcg_at_k(ranked, "b", 3) == pytest.approx(1 / math.log2(3))
    assert metrics.ndcg_at_k(ranked, "z", 3) == 0.0
    assert metrics.reciprocal_rank(ranked, "c", 3) == pytest.approx(1 / 3)
    same = np.stack([unit([1, 0])] * 3)
    assert metrics.intra_list_diversity(same) == pytest.approx(0.0, abs=1e-6)
    ortho = np.stack([unit([1, 0]), unit([0, 1])])
    assert metrics.intra_list_diversity(ortho) == pytest.approx(1.0)
    assert metrics.catalog_coverage({1, 2}, 8) == 0.25


def test_cooc_context_and_bounded_counts():
    assert item_stats.cooc_context(["a", "b", "c"], "c", 10) == ["a", "b"]
    assert item_stats.cooc_context(["a", "b", "c", "d"], "b", 2) == ["c", "d"], "the latest"
    assert item_stats.cooc_context(["a", "b"], "c", 0) == []
    counts = {}
    for y in ["x"] * 5 + ["y"] * 3 + list("abcdefg"):
        item_stats.cooc_add(counts, y, max_neighbours=3)
    assert counts["x"] == 5 and counts["y"] == 3 and len(counts) <= 6


def test_cooccurrence_halves_sum_to_symmetric_neighbour_counts():
    """Each pair is counted once, under the item consumed later; the catalog adds the two
    halves, for both items, whatever order the halves arrive in, and follows updates and
    pruning (a count that leaves both halves leaves the neighbour lists)."""
    def items() -> CatalogIndex:
        c = CatalogIndex(dim=3)
        for i, x in enumerate("abc"):
            c.upsert(x, x.upper(), np.eye(3)[i])
        return c

    cat = items()
    cat.set_cooccurrence("b", {"a": 2.0})  # a, then b: twice
    cat.set_cooccurrence("a", {"b": 1.0, "c": 4.0})  # b, then a: once; c, then a: 4 times
    assert cat.neighbours["a"] == {"b": 3.0, "c": 4.0}
    assert cat.neighbours["b"] == {"a": 3.0}
    assert cat.neighbours["c"] == {"a": 4.0}
    cat.set_cooccurrence("a", {"b": 2.0})  # c pruned from a's half, b counted again
    assert cat.neighbours["a"] == {"b": 4.0} and cat.neighbours["b"] == {"a": 4.0}
    assert cat.neighbours["c"] == {}
    # The same streams of halves, replayed the other way round, give the same counts.
    other = items()
    other.set_cooccurrence("a", {"b": 2.0})
    other.set_cooccurrence("b", {"a": 2.0})
    assert other.neighbours["a"] == cat.neighbours["a"]
    assert other.neighbours["b"] == cat.neighbours["b"]


def small_catalog():
    cat = CatalogIndex()
    for i, v in enumerate([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.9, 0.1], [0, 0, 1]]):
        cat.upsert(f"i{i}", f"Title {i}", unit(v))
    return cat


def test_cooc_scores_follow_history_neighbours():
    cat = small_catalog()
    for x in ("i0", "i2", "i4"):
        cat.set_popularity(x, 0.0, 4.0)
    cat.set_neighbours("i0", {"i4": 3.0, "i2": 1.0})
    st = UserState.empty(3)
    st.history = ["i0"]
    s = recommender.cooc_scores(st, cat, ModelParams.defaults(event_weights={}))
    assert s[cat.row["i4"]] > s[cat.row["i2"]] > 0 and s[cat.row["i1"]] == 0


def test_rank_explains_and_excludes_seen():
    cat = small_catalog()
    p = ModelParams.defaults(k=3, event_weights={"like": 1.0}, fusion_weights=(1.0, 1.0, 0.1, 0.0),
                    mmr_lambda=1.0)
    st = UserState.empty(3)
    assert recommender.apply_event(st, cat, p, "i0", 1.0, 1000)
    st.mark_seen("i0", 100, 10)
    cat.set_neighbours("i0", {"i4": 5.0})
    cat.set_popularity("i4", 0.0, 5.0)
    cat.set_popularity("i0", 0.0, 5.0)
    out = recommender.rank(st, cat, p, 2000)
    ids = [cat.ids[r] for r in out.rows]
    assert "i0" not in ids and len(ids) == 3
    assert set(ids[:2]) == {"i1", "i4"}
    why = dict(zip(ids, out.reasons))
    assert why["i1"] == "similar to Title 0"
    assert why["i4"] == "often liked after Title 0"
    assert not recommender.apply_event(st, cat, p, "unknown", 1.0, 3000)


@pytest.mark.parametrize("exact", [True, False])
def test_an_item_is_ranked_from_its_publication_on_and_fresh_items_rise(exact):
    """i5 (published at 5,000 ms) has i1's vector: before its publication no list holds it;
    at it, freshness puts it above i1; ten half-lives later the two tie again (i1 first, the
    lower row). Both the batched kernel and a large catalog's candidate path."""
    cat = small_catalog()
    cat.upsert("i5", "Title 5", unit([0.9, 0.1, 0]), published_ts=5000)
    rng = np.random.default_rng(0)
    for j in range(200):  # far from the user's interest (and an ANN index can be trained)
        cat.upsert(f"f{j}", "filler", unit(-1 + 0.1 * rng.standard_normal(3)))
    p = ModelParams.defaults(k=6, event_weights={"like": 1.0}, mmr_lambda=1.0,
                             fusion_weights=(1.0, 0.0, 0.0, 0.0), freshness_weight=0.1,
                             freshness_half_life_ms=1000.0, exact_max_items=20 if not exact
                             else 20000, ann_candidates=6, popular_candidates=6)
    st = UserState.empty(3)
    assert recommender.apply_event(st, cat, p, "i0", 1.0, 1000)

    def ids(ts):
        return [cat.ids[r] for r in recommender.rank(st, cat, p, ts, exact=exact).rows]

    assert "i5" not in ids(4999) and "i1" in ids(4999)
    assert ids(5000).index("i5") < ids(5000).index("i1")
    assert ids(5000 + 1000 * 30).index("i1") < ids(5000 + 1000 * 30).index("i5")
    one = recommender.rank_one(st, cat, p, 5000, exact=exact)
    assert [cat.ids[r] for r in one.rows] == ids(5000)
    assert cat.exclusion_mask(st.seen, 4999)[cat.row["i5"]]
    assert not cat.exclusion_mask(st.seen, 5000)[cat.row["i5"]]


def test_learning_moves_weights_towards_the_signal_that_predicted_the_choice():
    cat = small_catalog()
    p = ModelParams.defaults(k=2, event_weights={"like": 1.0}, learning_rate=0.5, l2=0.0)
    st = UserState.empty(3)
    recommender.apply_event(st, cat, p, "i0", 1.0, 1000)
    st.mark_seen("i0", 100, 10)
    st.shown = ["i1", "i3"]  # content-similar i1 was shown; the user chose i4 instead
    cat.set_neighbours("i0", {"i4": 5.0})
    cat.set_popularity("i4", 0.0, 5.0)
    cat.set_popularity("i0", 0.0, 5.0)
    recommender.apply_event(st, cat, p, "i4", 1.0, 2000)
    w = st.weights
    assert w is not None
    assert w[recommender.F_COOC] > p.prior[recommender.F_COOC]
    assert w[recommender.F_CONTENT] < p.prior[recommender.F_CONTENT]


def test_negative_feedback_stays_out_of_the_history_and_the_reasons():
    cat = small_catalog()
    p = ModelParams.defaults(k=3, event_weights={"like": 1.0, "dislike": -0.7, "skip": -0.2},
                             fusion_weights=(1.0, 1.0, 0.0, 0.0), mmr_lambda=1.0)
    st = UserState.empty(3)
    for item, etype, value in (("i0", "like", None), ("i2", "dislike", None),
                               ("i4", "skip", None), ("i3", "rating", 1.0)):
        assert recommender.observe(st, cat, p, item, p.weight(etype, value), 1000)
    # Every one is seen (never recommended again); only the like is recent.
    assert all(st.has_seen(x) for x in ("i0", "i2", "i3", "i4"))
    assert st.history == ["i0"]
    # A neutral rating is consumption (enters the history); a later dislike takes back a like.
    assert recommender.observe(st, cat, p, "i1", p.weight("rating", p.rating_neutral), 2000)
    assert st.history == ["i0", "i1"]
    recommender.observe(st, cat, p, "i0", p.weight("dislike", None), 3000)
    assert st.history == ["i1"]
    # With cooc_positive_only a neutral rating stays out too.
    strict = ModelParams.defaults(cooc_positive_only=True)
    assert not strict.enters_history(strict.weight("rating", strict.rating_neutral))
    assert strict.enters_history(strict.weight("rating", 4.0))


def test_reasons_never_cite_a_disliked_or_deleted_item():
    cat = small_catalog()
    cat.upsert("i5", "Title 5", unit([0.8, 0.2, 0]))
    p = ModelParams.defaults(k=2, event_weights={"like": 1.0, "dislike": -0.7},
                             fusion_weights=(1.0, 0.0, 0.0, 0.0), mmr_lambda=1.0)
    st = UserState.empty(3)
    recommender.observe(st, cat, p, "i0", 1.0, 1000)  # liked; i1 and i5 look like it
    recommender.observe(st, cat, p, "i2", -0.7, 2000)  # disliked
    recommender.observe(st, cat, p, "i3", 1.0, 3000)  # liked
    cited = " ".join(recommender.rank(st, cat, p, 4000).reasons)
    assert "Title 2" not in cited and "Title 0" in cited
    cat.delete("i0")
    cited = " ".join(recommender.rank(st, cat, p, 5000).reasons)
    assert "Title 0" not in cited and "Title 2" not in cited


def test_the_content_ablation_zeroes_the_content_feature_only():
    cat = small_catalog()
    cat.set_popularity("i4", 0.0, 3.0)
    p = ModelParams.defaults(event_weights={"like": 1.0})
    st = UserState.empty(3)
    recommender.observe(st, cat, p, "i0", 1.0, 1000)
    with_content = recommender.rank(st, cat, p, 2000).features
    ablated = recommender.rank(st, cat, dataclasses.replace(p, content_signal=False),
                               2000).features
    assert with_content[:, recommender.F_CONTENT].max() > 0.5
    assert not ablated[:, recommender.F_CONTENT].any()
    assert ablated[:, recommender.F_POP].max() > 0
    feats = recommender.features(st, cat, dataclasses.replace(p, content_signal=False), 2000)
    assert not feats[:, recommender.F_CONTENT].any()


def test_the_cited_recent_item_is_the_largest_part_first_on_ties():
    """Co-occurrence reasons cite, per row, the recent item with the largest part in its score
    (the first of them on ties, none without a positive part): the array version against the
    plain loop it replaced, on random neighbour lists with many ties."""
    from recsys.explain import _cooc_sources
    from recsys.scoring import CoocPieces

    class _Cat:
        size = 200

    def reference(by_cooc, per_item):
        best: dict[int, tuple[float, str]] = {}
        for x, nrows, part in per_item:
            for r, v in zip(nrows.tolist(), part.tolist()):
                if r in by_cooc and v > best.get(r, (0.0, ""))[0]:
                    best[r] = (v, x)
        return {r: x for r, (_, x) in best.items()}

    rng = np.random.default_rng(7)
    for _ in range(300):
        by_cooc = rng.choice(200, size=int(rng.integers(1, 10)), replace=False).tolist()
        per_item = []
        for i in range(int(rng.integers(1, 12))):
            rows = rng.choice(200, size=int(rng.integers(0, 40)), replace=False)
            per_item.append((f"x{i}", rows, rng.choice([0.0, 0.25, 0.5, 1.0], size=rows.size)))
        assert _cooc_sources(_Cat(), by_cooc, CoocPieces.of(per_item)) == \
            reference(by_cooc, per_item)
