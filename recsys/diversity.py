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
