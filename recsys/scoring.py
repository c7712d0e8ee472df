"""The batched scoring kernel: the fused scores of many users against the whole catalog at
once, their candidate pools, and diversity over the pools.

:func:`recsys.recommender.rank_batch` drives it; every step is an array operation over all
the users of a window, and only MMR's ten picks and the explanations of the final rows loop
in Python per user:

1. content: one matrix product of all users' centroids with the catalog
   (:func:`recsys.kernel.centroid_scores`, bf16 or fp32), the max over each user's centroids;
2. co-occurrence: every user's history neighbours scattered into one [users, n] array with one
   ``bincount``, normalised, the log feature taken on the non-zero entries only;
3. popularity and trending: one vector each for the whole catalog, cached until the item
   statistics change (:func:`trend_vector`);
4. fused scores, seen and deleted rows excluded, the pool of the best
   ``max(k, mmr_candidates)`` per user by one ``argpartition`` over all users.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from recsys import kernel, ranking

COOC_FLOOR = 1e-6  # relative co-occurrence mapped to feature 0
_COOC_SPAN = -math.log(COOC_FLOOR)

# The trending feature is evaluated at the event time rounded down to a multiple of
# half-life / TREND_STEPS: then one vector per change of the statistics serves every user of
# a window, and the feature is off by at most a factor 2^(1/TREND_STEPS) (0.07%).
TREND_STEPS = 1024


def trend_clock(now_ts: int, half_life_ms: float) -> int:
    """The time the trending feature is evaluated at (see ``TREND_STEPS``)."""
    if not math.isfinite(half_life_ms) or half_life_ms <= 0:
        return now_ts
    step = max(1, int(half_life_ms / TREND_STEPS))
    return (int(now_ts) // step) * step


def trend_vector(cat, now_ts: int, half_life_ms: float) -> np.ndarray:
    """The trending feature of every catalog row at ``now_ts`` (see ``trend_clock``), cached
    on the catalog until its statistics change."""
    stamp, vec = _trend(cat, now_ts, half_life_ms, None)
    cat._trend = (stamp, vec)
    return vec


def trend_of_row(cat, r: int, now_ts: int, half_life_ms: float) -> float:
    """Row ``r``'s value of :func:`trend_vector` (the same arithmetic on that one row), without
    the pass over the catalog that a change of the statistics would otherwise cost: the
    per-event step reads one item's features, and statistics change between most events."""
    return float(_trend(cat, now_ts, half_life_ms, r)[1][0])


def _trend(cat, now_ts: int, half_life_ms: float, r) -> tuple:
    """(cache stamp, the trending feature of every row, or of row ``r`` alone as a
    one-element array), from the cached vector when it is current."""
    clock = trend_clock(now_ts, half_life_ms)
    stamp = (cat.stats_version, cat.size, clock, half_life_ms)
    cached = getattr(cat, "_trend", None)
    if cached is not None and cached[0] == stamp:
        return stamp, cached[1] if r is None else cached[1][r:r + 1]
    lp = cat.popularity()
    top = float(lp.max()) if lp.size else -math.inf
    rows = lp if r is None else lp[r:r + 1]
    return stamp, (ranking.trending_feature(rows, top, clock, half_life_ms)
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
    operation for all of them rather than one per item (~55 us a user with 30 recent items,
    most of it the per-item lookups)."""
    counts = cat.counts()
    items, rows_l, counts_l, decays, norms = [], [], [], [], []
    decay = p.history_decay
    for age, x in enumerate(reversed(state.history)):
        rows, c = cat.neighbour_arrays(x)
        if rows.size == 0:
            continue
        items.append(x)
        rows_l.append(rows)
        counts_l.append(c)
        decays.append(decay ** age)
        norms.append(math.sqrt(history_norm(cat, x, counts)))
    if not items:
        return CoocPieces.of(())
    sizes = [r.size for r in rows_l]
    # (count * decay^age) / sqrt(n_x) per entry: the same rounding as item by item
    parts = np.concatenate(counts_l) * np.repeat(decays, sizes) / np.repeat(norms, sizes)
    return CoocPieces(items, sizes, np.concatenate(rows_l), parts)


def cooc_matrix(pieces: Sequence[CoocPieces], cat) -> np.ndarray:
    """[users, n] co-occurrence scores from each user's :func:`cooc_pieces`, with one
    scatter-add for all users (``np.add.at`` per recent item is ~10x slower); a user's row is
    ``recommender.cooc_scores``."""
    n = cat.size
    keys = [pc.rows + u * n for u, pc in enumerate(pieces) if pc.items]
    if not keys:
        return np.zeros((len(pieces), n))
    co = np.bincount(np.concatenate(keys),
                     weights=np.concatenate([pc.parts for pc in pieces if pc.items]),
                     minlength=len(pieces) * n).reshape(len(pieces), n)
    co /= np.sqrt(np.maximum(cat.counts(), 1.0))[None, :]
    return co


def cooc_feature(co: np.ndarray) -> np.ndarray:
    """The co-occurrence feature, in place: log scale relative to each user's best row
    (1 = best, 0 = none); computed on the non-zero entries only."""
    top = co.max(axis=1)
    u, r = np.nonzero(co)
    if u.size:
        co[u, r] = relative_cooc(co[u, r], top[u])
    return co


def content_matrix(states: Sequence, cat, precision: str) -> np.ndarray:
    """[users, n] content scores: each user's best cosine over their centroids (0 for a user
    given as None: no content, ``recommender.has_content``), from one matrix product for all
    users (each user's centroids padded to the most any user has with copies of their first,
    which leaves the max unchanged)."""
    n = cat.size
    out = np.zeros((len(states), n), np.float32)
    owners = [i for i, st in enumerate(states) if st is not None]
    if not owners:
        return out
    most = max(states[i].centroids.shape[0] for i in owners)
    blocks = np.empty((len(owners), most, cat.dim), np.float32)
    for j, i in enumerate(owners):
        c = states[i].centroids
        blocks[j, : c.shape[0]] = c
        blocks[j, c.shape[0]:] = c[0]
    best = kernel.centroid_scores(blocks.reshape(-1, cat.dim), cat, precision, group=most)
    if len(owners) == len(states):
        return best
    out[owners] = best
    return out


def pools(scores: np.ndarray, size: int) -> list[np.ndarray]:
    """Each user's best ``size`` rows (fewer when fewer are finite), best first, ties by the
    lower row: :func:`ranking.top_k` for every row of ``scores`` at once."""
    n = scores.shape[1]
    size = min(size, n)
    if size <= 0:
        return [np.empty(0, np.int64) for _ in range(scores.shape[0])]
    part = (np.argpartition(-scores, size - 1, axis=1)[:, :size] if size < n
            else np.broadcast_to(np.arange(n), scores.shape))
    out = []
    for u in range(scores.shape[0]):
        idx = part[u]
        s = scores[u, idx]
        keep = np.isfinite(s)
        idx, s = idx[keep], s[keep]
        out.append(idx[np.lexsort((idx, -s))])
    return out
