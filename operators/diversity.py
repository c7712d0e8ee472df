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
    chosen: list[int] = []
    max_sim = np.full(n, -np.inf)
    available = np.ones(n, dtype=bool)
    for _ in range(k):
        penalty = np.where(np.isfinite(max_sim), max_sim, 0.0)
        value = lam * rel - (1.0 - lam) * penalty
        value[~available] = -np.inf
        best = int(np.argmax(value))
        chosen.append(best)
        available[best] = False
        max_sim = np.maximum(max_sim, sims[best])
    return chosen
