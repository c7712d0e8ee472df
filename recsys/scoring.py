"""The batched scoring kernel: the fused scores of many users against the whole catalog,
their candidate pools, and diversity over the pools.

:func:`recsys.recommender.rank_batch` drives it:

1. content: one matrix product of all the window's users' centroids with the catalog
   (:func:`recsys.kernel.start_centroid_scores`, bf16 or fp32), the max over each user's
   centroids; in a TaskManager in bf16 it runs on the kernel thread while the ranker's
   thread computes the window's co-occurrence pieces and trends;
2. per user (:func:`user_scores`), each pass over one row that stays in the CPU's cache:
   co-occurrence (the history neighbours scattered with one ``bincount``, normalised, the log
   feature), the fused score with popularity and trending (one vector each for the whole
   catalog, cached until the item statistics change: :func:`trend_vector`), seen and
   deleted rows excluded, and the pool of the best ``max(k, mmr_candidates)`` rows by one
   bounded selection (:func:`pool`, ``ranking.best_rows``);
3. MMR over all users' pools at once (``diversity.mmr_batch``); explanations of the final
   rows only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from recsys import kernel, ranking
from recsys.fusion import F_CONTENT, F_COOC, F_POP, F_TREND

COOC_FLOOR = 1e-6  # relative co-occurrence mapped to feature 0
_COOC_SPAN = -math.log(COOC_FLOOR)

# The trending feature is evaluated at the event time rounded down to a multiple of
# half-life / TREND_STEPS: then one vector per change of the statistics serves every user of
# a window, and the feature is off by at most a factor 2^(1/TREND_STEPS) (0.07%).
TREND_STEPS = 1024


# Items are fresh for this many freshness half-lives after their publication (then 2^-10).
FRESH_HALF_LIVES = 10


def freshness_term(cat, now_ts: int, weight: float, half_life_ms: float) -> tuple:
    """(rows, terms): what freshness adds to the fused scores at ``now_ts``, ``weight`` *
    0.5 ** (age / ``half_life_ms``) for the items published in the ``FRESH_HALF_LIVES``
    half-lives before (``CatalogIndex.published``), nothing to any other row. A fixed term,
    not a learned feature. The last result is kept on the catalog: eval ranks both of its
    streamrank variants at each event's time."""
    stamp = (cat.published_version, now_ts, weight, half_life_ms)
    cached = getattr(cat, "_fresh", None)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    if weight and half_life_ms > 0:
        rows, ages = cat.published_since(now_ts, FRESH_HALF_LIVES * half_life_ms)
        term = (rows, weight * np.exp2(ages / -half_life_ms))
    else:
        term = (np.empty(0, np.int64), np.empty(0))
    cat._fresh = (stamp, term)
    return term


def trend_clock(now_ts: int, half_life_ms: float) -> int:
    """The time the trending feature is evaluated at (see ``TREND_STEPS``)."""
    if not math.isfinite(half_life_ms) or half_life_ms <= 0:
        return now_ts
    step = max(1, int(half_life_ms / TREND_STEPS))
    return (int(now_ts) // step) * step


def trend_vector(cat, now_ts: int, half_life_ms: float) -> np.ndarray:
    """The trending feature of every catalog row at ``now_ts`` (see ``trend_clock``), cached
    on the catalog until its statistics change."""
    stamp = _trend_stamp(cat, now_ts, half_life_ms)
    cached = getattr(cat, "_trend", None)
    if cached is None or cached[0] != stamp:
        cached = cat._trend = (stamp, _trend_rows(cat, now_ts, half_life_ms, None))
    return cached[1]


def trend_of_row(cat, r: int, now_ts: int, half_life_ms: float) -> float:
    """Row ``r``'s value of :func:`trend_vector` (the same arithmetic on that one row). The
    first read after a change of the statistics computes that row alone (where statistics
    change between most events, as in eval's replay, a pass over the catalog per event
    would cost ~100 us); a second read of the same statistics computes and caches the whole
    vector (in the job statistics change once per batch, and every event reads a row:
    ~10 us each on a one-element array otherwise)."""
    stamp = _trend_stamp(cat, now_ts, half_life_ms)
    cached = getattr(cat, "_trend", None)
    if cached is None or cached[0] != stamp:
        if getattr(cat, "_trend_read", None) != stamp:
            cat._trend_read = stamp
            return float(_trend_rows(cat, now_ts, half_life_ms, r)[0])
        cached = cat._trend = (stamp, _trend_rows(cat, now_ts, half_life_ms, None))
    return float(cached[1][r])


def _trend_stamp(cat, now_ts: int, half_life_ms: float) -> tuple:
    return (cat.stats_version, cat.size, trend_clock(now_ts, half_life_ms), half_life_ms)


def _trend_rows(cat, now_ts: int, half_life_ms: float, r) -> np.ndarray:
    """The trending feature of every row, or of row ``r`` alone as a one-element array."""
    lp = cat.popularity()
    top = cat.maxima()[1]
    rows = lp if r is None else lp[r:r + 1]
    return (ranking.trending_feature(rows, top, trend_clock(now_ts, half_life_ms),
                                     half_life_ms)
            if math.isfinite(top) else np.zeros(rows.shape[0]))


def history_norm(cat, x: str, counts: np.ndarray) -> float:
    """``n_x``, what a recent item x's co-occurrence counts are divided by (with its square
    root): its interaction count, or while it has none, its largest pair count (at least 1)."""
    rx = cat.row.get(x)
    if rx is not None and counts[rx] > 0:
        return float(counts[rx])
    c = cat.neighbour_arrays(x)[1]
    return max(float(c.max()), 1.0) if c.size else 1.0


def relative_cooc(values, top: float):
    """The co-occurrence feature of scores ``values`` (array or float) for a user whose best
    is ``top`` > 0: log scale relative to the best (1 = best, 0 = none or below
    ``COOC_FLOOR`` of it)."""
    return np.maximum(1.0 + np.log(values / top + COOC_FLOOR) / _COOC_SPAN, 0.0)


@dataclass(frozen=True)
class CoocPieces:
    """One user's co-occurrence contributions, per recent item x with neighbours (most recent
    first): ``items`` the x, ``sizes`` how many neighbours each has, and, concatenated in that
    order, ``rows`` the neighbours' catalog rows and ``parts`` their parts
    ``decay^age * count / sqrt(n_x)``. Summed per row and divided by ``sqrt(n_row)`` they are
    the co-occurrence scores; the reasons cite the x with the largest part."""

    items: list
    sizes: list
    rows: np.ndarray
    parts: np.ndarray

    @classmethod
    def of(cls, per_item: Sequence[tuple]) -> "CoocPieces":
        """From (x, rows, parts) triples."""
        if not per_item:
            return cls([], [], np.empty(0, np.int64), np.empty(0))
        return cls([x for x, _, _ in per_item], [len(r) for _, r, _ in per_item],
                   np.concatenate([r for _, r, _ in per_item]),
                   np.concatenate([v for _, _, v in per_item]))


def cooc_pieces(state, cat, p) -> CoocPieces:
    """The user's :class:`CoocPieces`: each recent item's neighbour arrays, scaled with one
    operation for all of them rather than one per item, and the divisors ``n_x`` of all the
    items read from the interaction counts at once (:func:`history_norm` for those without
    any)."""
    history = state.history[::-1]  # most recent first: the age is the position
    arrays = cat.neighbour_arrays_of(history)
    ages = [age for age, (rows, _) in enumerate(arrays) if rows.size]
    if not ages:
        return CoocPieces.of(())
    items = [history[age] for age in ages]
    rows_l = [arrays[age][0] for age in ages]
    counts_l = [arrays[age][1] for age in ages]
    decay = p.history_decay
    decays = [decay ** age for age in ages]
    counts = cat.counts()
    get = cat.row.get
    at = np.array([get(x, -1) for x in items])
    n = np.where(at >= 0, counts[at], 0.0)  # (-1: not an item yet)
    for j in np.flatnonzero(n <= 0).tolist():  # no interactions yet: history_norm's rule
        n[j] = history_norm(cat, items[j], counts)
    sizes = [r.size for r in rows_l]
    # (count * decay^age) / sqrt(n_x) per entry: the same rounding as item by item
    parts = np.concatenate(counts_l) * np.repeat(decays, sizes) / np.repeat(np.sqrt(n), sizes)
    return CoocPieces(items, sizes, np.concatenate(rows_l), parts)


def cooc_row(pieces: CoocPieces, cat) -> np.ndarray:
    """One user's co-occurrence score of every catalog row: their :func:`cooc_pieces`
    summed per row with one scatter-add (``np.add.at`` per recent item is ~10x slower) and
    divided by ``sqrt(n_row)``; ``recommender.cooc_scores``."""
    if not pieces.items:
        return np.zeros(cat.size)
    co = np.bincount(pieces.rows, weights=pieces.parts, minlength=cat.size)
    co /= cat.count_norms()
    return co


def cooc_feature(co: np.ndarray, top: float) -> np.ndarray:
    """The co-occurrence feature of a user's scores ``co``, whose best is ``top`` > 0, in
    place: log scale relative to the best (1 = best, 0 = none). :func:`relative_cooc`'s
    arithmetic in the same order, as dense passes over the whole row: a zero entry comes out
    exactly 0 (``log(COOC_FLOOR)`` over its own negation is -1), and five passes cost ~30 us
    a user against ~105 for picking the non-zero entries out and back (20 users, a third of
    the entries non-zero)."""
    co /= top
    co += COOC_FLOOR
    np.log(co, out=co)
    co /= _COOC_SPAN
    co += 1.0
    return np.maximum(co, 0.0, out=co)


def start_content_matrix(states: Sequence, cat, precision: str) -> Callable[[], np.ndarray]:
    """Start computing the [users, n] content scores: each user's best cosine over their
    centroids (0 for a user given as None: no content, ``recommender.has_content``), from one
    matrix product for all users (each user's centroids padded to the most any user has with
    copies of their first, which leaves the max unchanged). Returns a function to call,
    exactly once, for them (:func:`kernel.start_centroid_scores`)."""
    n = cat.size
    owners = [i for i, st in enumerate(states) if st is not None]
    if not owners:
        none = np.zeros((len(states), n), np.float32)
        return lambda: none
    most = max(states[i].centroids.shape[0] for i in owners)
    blocks = np.empty((len(owners), most, cat.dim), np.float32)
    for j, i in enumerate(owners):
        c = states[i].centroids
        blocks[j, : c.shape[0]] = c
        blocks[j, c.shape[0]:] = c[0]
    wait = kernel.start_centroid_scores(blocks.reshape(-1, cat.dim), cat, precision,
                                        group=most)
    if len(owners) == len(states):
        return wait

    def scattered() -> np.ndarray:
        out = np.zeros((len(states), n), np.float32)
        out[owners] = wait()
        return out

    return scattered


def user_scores(content: np.ndarray, pieces: CoocPieces, cat, w: np.ndarray,
                trend: np.ndarray, pop: np.ndarray, excluded: np.ndarray,
                fresh: Optional[tuple] = None) -> tuple:
    """One user's fused score of every catalog row, ``excluded`` rows at -inf: returns
    (scores, the co-occurrence feature, the best co-occurrence score). ``content``: the
    user's row of :func:`start_content_matrix`'s result; ``w``: their fusion weights (float64);
    ``fresh``: :func:`freshness_term` at the user's event time.

    One user at a time on purpose: each pass then runs over a row that stays in the CPU's
    cache (~78 KB in float64 at 10k items) rather than over [users, n] arrays (1.5 MB at 20
    users), 3x faster for the same arithmetic in the same order."""
    co = cooc_row(pieces, cat)
    top = float(co.max()) if co.size else 0.0
    cooc = cooc_feature(co, top) if top > 0 else co  # (none: all 0 as it is)
    scores = np.multiply(content, w[F_CONTENT])  # content*w + cooc*w + pop*w + trend*w
    term = np.multiply(cooc, w[F_COOC])
    scores += term
    scores += np.multiply(pop, w[F_POP], out=term)
    scores += np.multiply(trend, w[F_TREND], out=term)
    if fresh is not None:
        scores[fresh[0]] += fresh[1]
    scores[excluded] = -np.inf
    return scores, cooc, top


def pool(scores: np.ndarray, size: int) -> np.ndarray:
    """A user's best ``size`` rows (fewer when fewer are finite), best first, ties by the
    lower row: :func:`ranking.top_k` without the exclusions (already at -inf)."""
    return ranking.best_rows(scores, size)
