"""The streamrank model: signals, ranking and learning.

Plain functions over :class:`UserState` and :class:`CatalogIndex`; the Flink ranker and
``streamrank eval`` call exactly these, so what is evaluated is what runs. Its settings are
:class:`recsys.params.ModelParams`, the batched kernel is :mod:`recsys.scoring`, the reasons
:mod:`recsys.explain`.

Signals (one column each of the feature matrix, all scaled to about [0, 1]):

* ``content``    best cosine between the item and one of the user's interest centroids;
* ``cooc``       item-to-item co-occurrence with the user's recent history ("rated X, then
                 rated Y"), each history item weighted by recency, cosine-normalised by both
                 items' interaction counts; in log scale relative to the user's best
                 candidate (1 = best, 0 = no co-occurrence), so that adding ``popularity``
                 makes a product of experts, which measured better than a linear blend;
* ``popularity`` log interaction count, relative to the most popular item;
* ``trending``   log of the decayed positive-feedback count, relative to the top item.

``ranking.content_signal`` false zeroes ``content`` (the ablation of ``streamrank eval``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from recsys import diversity, fusion, interests, kernel, ranking, scoring
from recsys.catalog import CatalogIndex
from recsys.explain import explain_rows
from recsys.fusion import F_CONTENT, F_COOC, F_POP, F_TREND  # noqa: F401  (feature columns)
from recsys.params import ModelParams
from recsys.user_state import UserState


def cooc_scores(state: UserState, cat: CatalogIndex, p: ModelParams,
                contributions: bool = False):
    """Co-occurrence score of every catalog row with the user's recent history (and, with
    ``contributions``, the :class:`scoring.CoocPieces` it is summed from)."""
    pieces = scoring.cooc_pieces(state, cat, p)
    scores = scoring.cooc_row(pieces, cat)
    return (scores, pieces) if contributions else scores


def features(state: UserState, cat: CatalogIndex, p: ModelParams, now_ts: int,
             rows: Optional[np.ndarray] = None,
             cooc: Optional[np.ndarray] = None,
             content: Optional[np.ndarray] = None) -> np.ndarray:
    """The [n, 4] feature matrix for all catalog rows (or only ``rows``: the same values those
    rows have in the full matrix; every normalisation uses catalog-wide maxima). ``content``:
    the user's content scores of every catalog row, when the caller has them
    (:func:`content_scores_batch`)."""
    n = cat.size
    feats = np.zeros((n if rows is None else len(rows), 4))
    if n == 0 or feats.shape[0] == 0:
        return feats

    def sel(values: np.ndarray) -> np.ndarray:
        return values if rows is None else values[rows]

    if has_content(state, cat, p):
        feats[:, F_CONTENT] = (sel(content) if content is not None else
                               interests.content_scores(state.centroids, sel(cat.live_matrix())))
    co = cooc_scores(state, cat, p) if cooc is None else cooc
    top = float(co.max())
    if top > 0:
        feats[:, F_COOC] = scoring.relative_cooc(sel(co), top)
    feats[:, F_POP] = sel(cat.relative_log_counts())
    feats[:, F_TREND] = sel(scoring.trend_vector(cat, now_ts, p.popularity_half_life_ms))
    return feats


def has_content(state: UserState, cat: CatalogIndex, p: ModelParams) -> bool:
    """Whether the content signal scores this user: it is on (``ranking.content_signal``;
    off is the eval's ablation) and the user has interest centroids in the catalog's
    vector space. The one gate of every content computation."""
    return p.content_signal and state.has_interest and state.dim == cat.dim


def candidate_rows(state: UserState, cat: CatalogIndex, p: ModelParams,
                   cooc: np.ndarray, now_ts: Optional[int] = None) -> np.ndarray:
    """The rows a large catalog scores for this user (see ``ranking.exact_max_items``):
    every co-occurring item, the ANN neighbours of each interest centroid, the most
    popular and trending items and, given ``now_ts``, the newest published ones (with a
    ``freshness_weight``). Sorted, unique."""
    parts = [np.flatnonzero(cooc), cat.popular_rows(p.popular_candidates)]  # cooc >= 0
    if now_ts is not None:  # the newest published items that freshness lifts
        fresh = scoring.freshness_term(cat, now_ts, p.freshness_weight,
                                       p.freshness_half_life_ms)[0]
        parts.append(fresh[max(fresh.size - p.popular_candidates, 0):])
    if has_content(state, cat, p):
        parts.append(cat.ann_rows(state.centroids, p.ann_candidates, p.ann_nprobe))
    return np.unique(np.concatenate(parts))


def user_weights(state: UserState, p: ModelParams) -> np.ndarray:
    return p.prior if state.weights is None else state.weights


@dataclass
class Ranked:
    rows: list[int]
    scores: list[float]
    reasons: list[str]
    features: Optional[np.ndarray] = None  # [len(rows), 4] the rows' features
    cooc_top: float = 0.0  # the user's best co-occurrence score (the feature's scale)


def rank(state: UserState, cat: CatalogIndex, p: ModelParams, now_ts: int,
         explain: bool = True, exact: Optional[bool] = None) -> Ranked:
    """The user's top-k: :func:`rank_batch` for one user."""
    return rank_batch([(state, now_ts)], cat, p, explain=explain, exact=exact)[0]


def rank_batch(requests: Sequence[tuple[UserState, int]], cat: CatalogIndex, p: ModelParams,
               explain: bool = True, chunk: int = 64,
               exact: Optional[bool] = None) -> list[Ranked]:
    """The top-k of several users (``requests``: (state, event time) pairs, at most one per
    user): fused scores, seen and deleted items excluded, MMR diversity, a reason per item.

    Catalogs up to ``p.exact_max_items`` rows (or ``exact``) go through the batched kernel
    (:mod:`recsys.scoring`), ``chunk`` users per matrix product, in the precision
    ``p.kernel_precision`` resolves to; larger ones score each user's candidate rows
    (:func:`rank_one`)."""
    if cat.size == 0:
        return [Ranked([], [], []) for _ in requests]
    if exact is None:
        exact = cat.size <= p.exact_max_items
    if not exact:
        return [rank_one(st, cat, p, ts, explain=explain, exact=False) for st, ts in requests]
    precision = kernel.chosen(p.kernel_precision)
    out: list[Ranked] = []
    for start in range(0, len(requests), max(1, chunk)):
        out.extend(_rank_exact(requests[start:start + chunk], cat, p, explain, precision))
    return out


def _rank_exact(part: Sequence[tuple[UserState, int]], cat: CatalogIndex, p: ModelParams,
                explain: bool, precision: str) -> list[Ranked]:
    """:func:`rank_batch` over the whole catalog: the content scores of all users from one
    matrix product, then each user's fused scores and pool (see :mod:`recsys.scoring`)."""
    states = [st for st, _ in part]
    n = cat.size
    # The content product runs on the kernel thread (bf16 in a TaskManager) while this thread
    # computes the co-occurrence and the other features (see kernel.start_centroid_scores).
    content_of = scoring.start_content_matrix(
        [st if has_content(st, cat, p) else None for st in states], cat, precision)
    try:
        pieces = [scoring.cooc_pieces(st, cat, p) for st in states]
        pop = cat.relative_log_counts()
        trends = [scoring.trend_vector(cat, ts, p.popularity_half_life_ms) for _, ts in part]
        fresh = [scoring.freshness_term(cat, ts, p.freshness_weight, p.freshness_half_life_ms)
                 for _, ts in part]
        w = np.array([user_weights(st, p) for st in states])
    finally:
        content = content_of()
    deleted = np.flatnonzero(cat.deleted[:n])
    size = max(p.k, p.mmr_candidates)
    scores, cooc, tops, pool = [], [], [], []
    for u, st in enumerate(states):
        excluded = np.concatenate([cat.rows_of_keys(st.seen), deleted,
                                   cat.unpublished_rows(part[u][1])])
        s_u, c_u, top = scoring.user_scores(content[u], pieces[u], cat, w[u], trends[u], pop,
                                            excluded, fresh[u])
        scores.append(s_u)
        cooc.append(c_u)
        tops.append(top)
        pool.append(scoring.pool(s_u, size))
    mat = cat.live_matrix()
    picked = diversity.mmr_batch([scores[u][r] for u, r in enumerate(pool)],
                                 [mat[r] for r in pool], p.k, p.mmr_lambda)
    out = []
    for u, (st, _) in enumerate(part):
        rows = pool[u][picked[u]] if len(picked[u]) else np.empty(0, np.int64)
        feats = np.stack([content[u, rows], cooc[u][rows], pop[rows], trends[u][rows]],
                         axis=1).astype(np.float64)
        reasons = [""] * len(rows)
        if explain and len(rows):
            reasons = explain_rows(st, cat, p, rows.tolist(), feats, w[u], pieces[u])
        out.append(Ranked(rows.tolist(), scores[u][rows].tolist(), reasons, feats, tops[u]))
    return out


def rank_one(state: UserState, cat: CatalogIndex, p: ModelParams, now_ts: int,
             explain: bool = True, cooc: Optional[np.ndarray] = None,
             exact: Optional[bool] = None, content: Optional[np.ndarray] = None) -> Ranked:
    """One user's top-k, one feature matrix at a time, in fp32: the path of catalogs over
    ``p.exact_max_items`` rows, which score only ``candidate_rows`` (``exact`` forces either
    way), and the reference the batched kernel is tested against. ``content``: precomputed
    content scores of every row (exact only)."""
    if cat.size == 0:
        return Ranked([], [], [])
    pieces = None
    if explain:  # one co-occurrence pass serves both the scores and the reasons
        cooc, pieces = cooc_scores(state, cat, p, contributions=True)
    elif cooc is None:
        cooc = cooc_scores(state, cat, p)
    if exact is None:
        exact = cat.size <= p.exact_max_items
    cand = None if exact else candidate_rows(state, cat, p, cooc, now_ts)
    feats = features(state, cat, p, now_ts, rows=cand, cooc=cooc, content=content)
    w = user_weights(state, p)
    scores = fusion.fuse(feats, w)
    fresh_rows, fresh = scoring.freshness_term(cat, now_ts, p.freshness_weight,
                                               p.freshness_half_life_ms)
    if cand is not None:  # the candidates' positions of the fresh rows
        _, fresh_rows, of = np.intersect1d(cand, fresh_rows, assume_unique=True,
                                           return_indices=True)
        fresh = fresh[of]
    scores[fresh_rows] += fresh
    exclude = cat.exclusion_mask(state.seen, now_ts)
    pool = ranking.top_k(scores, max(p.k, p.mmr_candidates),
                         exclude if cand is None else exclude[cand])
    if pool.size == 0:
        return Ranked([], [], [])
    pool_rows = pool if cand is None else cand[pool]
    picked = diversity.mmr(scores[pool], cat.live_matrix()[pool_rows], p.k, p.mmr_lambda)
    rows = [int(pool_rows[i]) for i in picked]
    at = [int(pool[i]) for i in picked]  # the same rows' positions in feats/scores
    reasons = (explain_rows(state, cat, p, rows, feats[at], w, pieces) if explain
               else [""] * len(rows))
    return Ranked(rows, [float(scores[i]) for i in at], reasons, feats[at],
                  float(cooc.max()) if cooc.size else 0.0)


def learn(state: UserState, cat: CatalogIndex, p: ModelParams, item_id: str,
          weight: float, now_ts: int, cooc: Optional[np.ndarray] = None) -> None:
    """Online fusion update from one positive interaction: the engaged item should outscore
    the items of the user's previous top-k that were shown and not chosen.

    The shown items' features are the ones they were ranked with (kept in the state with the
    list), and the engaged item's are computed for that one item on the same scale
    (:func:`item_features`): no pass over the catalog. A state without them (written before
    they were kept) learns from a feature matrix of the rows, as before."""
    if weight <= 0 or p.learning_rate <= 0 or not state.shown or item_id not in cat.row:
        return
    kept = state.shown_features
    if kept is None or len(kept) != len(state.shown):
        neg = [cat.row[x] for x in state.shown if x != item_id and cat.vector(x) is not None]
        if not neg:
            return
        f = features(state, cat, p, now_ts, rows=np.array([cat.row[item_id]] + neg), cooc=cooc)
        pos, negatives = f[0], f[1:]
    else:
        live = [i for i, x in enumerate(state.shown) if cat.vector(x) is not None]
        negatives = kept[[i for i in live if state.shown[i] != item_id]]
        if not len(negatives):
            return
        at = state.shown.index(item_id) if item_id in state.shown else -1
        pos = kept[at] if at >= 0 else item_features(state, cat, p, item_id, now_ts,
                                                     state.cooc_top)
    state.weights = fusion.pairwise_update(user_weights(state, p), pos, negatives,
                                           p.learning_rate, p.l2, p.prior)


def item_features(state: UserState, cat: CatalogIndex, p: ModelParams, item_id: str,
                  now_ts: int, cooc_top: float) -> np.ndarray:
    """One catalog item's features for the user, the co-occurrence relative to
    ``cooc_top`` (the user's best when last ranked): the row :func:`features` gives, from
    lookups of that item alone."""
    r = cat.row[item_id]
    out = np.zeros(4)
    if has_content(state, cat, p):
        out[F_CONTENT] = float((state.centroids @ cat.matrix[r]).max())
    raw, counts, lists = 0.0, cat.counts(), cat.neighbours
    for age, x in enumerate(reversed(state.history)):
        of_x = lists.get(x)
        c = of_x.get(item_id) if of_x is not None else None
        if c:
            raw += (p.history_decay ** age) * c / math.sqrt(scoring.history_norm(cat, x, counts))
    raw /= math.sqrt(max(counts[r], 1.0))
    if raw > 0 and cooc_top > 0:
        out[F_COOC] = scoring.relative_cooc(min(raw, cooc_top), cooc_top)
    out[F_POP] = cat.relative_log_count(r)
    out[F_TREND] = scoring.trend_of_row(cat, r, now_ts, p.popularity_half_life_ms)
    return out


def apply_event(state: UserState, cat: CatalogIndex, p: ModelParams, item_id: str,
                weight: float, ts: int, cooc: Optional[np.ndarray] = None) -> bool:
    """Apply one interaction with a catalog item: learn (from the list shown before it),
    move the interest centroids. ``cooc`` may pass this state's co-occurrence scores when the
    caller already has them. Returns False (nothing applied) when the item is unknown."""
    vec = cat.vector(item_id)
    if vec is None:
        return False
    learn(state, cat, p, item_id, weight, ts, cooc=cooc)
    state.apply_interest(vec, weight, ts, max_centroids=p.max_centroids,
                         open_threshold=p.centroid_open_threshold, alpha=p.alpha,
                         half_life_ms=p.half_life_ms)
    return True


def observe(state: UserState, cat: CatalogIndex, p: ModelParams, item_id: str, weight: float,
            ts: int, cooc: Optional[np.ndarray] = None) -> bool:
    """The ranker's step for one interaction: apply it (learn, move the interests) and mark
    the item seen (and recent, unless negative: ``ModelParams.enters_history``). False, with
    the state untouched, when the item is not in the catalog yet: the caller holds the event
    and observes it again once the item is known. ``cooc``: the state's co-occurrence
    scores, when the caller has them."""
    if not apply_event(state, cat, p, item_id, weight, ts, cooc=cooc):
        return False
    state.mark_seen(item_id, p.max_seen, p.history_size, consumed=p.enters_history(weight))
    return True


def rebuild_interests(state: UserState, cat: CatalogIndex, p: ModelParams) -> None:
    """Recompute the interest centroids from the user's recent items in ``cat``'s vector
    space (after an embedding model switch); each counts as a ``like``. The event count and
    clock are kept."""
    n_events, last_ts = state.n_events, state.last_ts
    dim = cat.dim or state.dim
    state.centroids = np.zeros((0, dim), np.float32)
    state.masses = np.zeros(0, np.float32)
    weight = p.weight("like", None)
    for item_id in state.history:
        vec = cat.vector(item_id)
        if vec is not None:
            state.apply_interest(vec, weight, last_ts, max_centroids=p.max_centroids,
                                 open_threshold=p.centroid_open_threshold, alpha=p.alpha,
                                 half_life_ms=p.half_life_ms)
    state.n_events, state.last_ts = n_events, last_ts
