"""Maximal Marginal Relevance re-ranking (Carbonell & Goldstein, 1998)."""

from __future__ import annotations

import numpy as np


def mmr(relevance: np.ndarray, vectors: np.ndarray, k: int, lam: float) -> list[int]:
    """Pick ``k`` of the candidates greedily by ``lam * rel - (1 - lam) * max_sim_selected``.

    ``relevance`` [n] scores of the candidates (any scale: min-max normalised here),
    ``vectors`` [n, d] their L2-normalised embeddings. ``lam = 1`` keeps the relevance order;
    lower values trade relevance for diversity. Returns positions into the candidate arrays.
    """
    n = relevance.shape[0]
    k = min(k, n)
    if k <= 0:
        return []
    if lam >= 1.0 or n <= 1:
        return list(np.argsort(-relevance, kind="stable")[:k])
    lo, hi = float(relevance.min()), float(relevance.max())
    rel = (relevance - lo) / (hi - lo) if hi > lo else np.zeros(n)
    sims = vectors @ vectors.T
    # value = lam * rel - (1 - lam) * (max similarity to the chosen items; 0 before the first)
    base = lam * rel
    value = base.copy()
    chosen: list[int] = []
    max_sim = None
    for _ in range(k):
        best = int(np.argmax(value))  # ties: the lower position
        chosen.append(best)
        if len(chosen) == k:
            break
        max_sim = sims[best].copy() if max_sim is None else np.maximum(max_sim, sims[best],
                                                                       out=max_sim)
        value = base - (1.0 - lam) * max_sim
        value[chosen] = -np.inf
    return chosen


def mmr_batch(relevance: list[np.ndarray], vectors: list[np.ndarray], k: int,
              lam: float) -> list[list[int]]:
    """:func:`mmr` for several users at once (each its own candidates, padded to the longest
    list): the same picks, with the similarity matrices and each of the ``k`` greedy steps
    computed for all users together."""
    sizes = [r.shape[0] for r in relevance]
    m = max(sizes, default=0)
    if lam >= 1.0 or m <= 1 or len(relevance) == 1:
        return [mmr(r, v, k, lam) for r, v in zip(relevance, vectors)]
    users = len(relevance)
    rel = np.full((users, m), -np.inf)
    vec = np.zeros((users, m, vectors[0].shape[1]), np.float32)
    for u, (r, v) in enumerate(zip(relevance, vectors)):
        rel[u, : sizes[u]] = r
        vec[u, : sizes[u]] = v
    valid = np.isfinite(rel)
    lo = np.where(valid, rel, np.inf).min(axis=1, keepdims=True)
    hi = np.where(valid, rel, -np.inf).max(axis=1, keepdims=True)
    span = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(span > 0, (rel - lo) / np.where(span > 0, span, 1.0), 0.0)
    base = np.where(valid, lam * norm, -np.inf)
    sims = vec @ vec.transpose(0, 2, 1)
    steps = min(k, m)
    chosen = np.zeros((users, steps), np.int64)
    at = np.arange(users)
    value, max_sim = base.copy(), None
    for t in range(steps):
        best = np.argmax(value, axis=1)  # ties: the lower position
        chosen[:, t] = best
        if t == steps - 1:
            break
        s = sims[at, best]
        max_sim = s.astype(np.float32) if max_sim is None else np.maximum(max_sim, s)
        value = base - (1.0 - lam) * max_sim
        value[at[:, None], chosen[:, : t + 1]] = -np.inf
    return [chosen[u, : min(k, sizes[u])].tolist() for u in range(users)]
