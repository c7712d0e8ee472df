"""Ranking metrics over plain arrays (no model, no Flink): used by ``streamrank eval``."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def rank_of(ranked: Sequence, target) -> int | None:
    """0-based position of ``target`` in ``ranked``, or None."""
    for pos, item in enumerate(ranked):
        if item == target:
            return pos
    return None


def hit_at_k(ranked: Sequence, target, k: int) -> float:
    pos = rank_of(ranked[:k], target)
    return 1.0 if pos is not None else 0.0


def ndcg_at_k(ranked: Sequence, target, k: int) -> float:
    """NDCG@k with one relevant item: 1/log2(pos + 2), ideal DCG = 1."""
    pos = rank_of(ranked[:k], target)
    return 0.0 if pos is None else 1.0 / math.log2(pos + 2)


def reciprocal_rank(ranked: Sequence, target, k: int) -> float:
    """1/(pos+1) when the target is in the top-k, else 0 (MRR@k)."""
    pos = rank_of(ranked[:k], target)
    return 0.0 if pos is None else 1.0 / (pos + 1)


def intra_list_diversity(vectors: np.ndarray) -> float:
    """Mean pairwise cosine distance (1 - cos) of a list's L2-normalised item vectors."""
    n = vectors.shape[0]
    if n < 2:
        return 0.0
    sims = vectors @ vectors.T
    off = sims[~np.eye(n, dtype=bool)]
    return float(np.mean(1.0 - off))


def catalog_coverage(recommended_ids: set, catalog_size: int) -> float:
    return len(recommended_ids) / catalog_size if catalog_size else 0.0
