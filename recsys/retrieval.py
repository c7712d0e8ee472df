"""Candidate retrieval for large catalogs: an approximate nearest-neighbour index over the
catalog rows (faiss IVF-Flat, inner product = cosine on unit rows).

Chosen by measurement on this machine (`scripts/ann_choice.py`: 100,000 x 384 unit vectors,
one core, 400 queries, top 100, one run): faiss IVF-Flat (nlist 4 sqrt(n) = 1264, nprobe 32)
built in 4.6 s and answered in 0.21 ms at recall@10 0.81; faiss HNSW (M 32, ef 128) took
33 s to build and 0.46 ms per query at recall 0.75; usearch HNSW (an earlier run) 47 s and
0.87 ms at 0.60. A catalog grows and changes while the job runs: IVF adds rows without
rebuilding, and is re-trained when the catalog has doubled. Recall on real embeddings is
higher (`streamrank bench` reports it on a MovieLens-derived catalog).

Row ids in the index are catalog rows; deleted rows stay in the index and are excluded by
the caller, like in exact scoring.
"""

from __future__ import annotations

import math

import numpy as np

TRAIN_POINTS_PER_LIST = 40


def nlist_for(n: int) -> int:
    """Inverted lists for ``n`` rows: ~4 sqrt(n) (faiss' guidance is 4-16 sqrt(n))."""
    return max(1, int(4 * math.sqrt(max(n, 1))))


class AnnIndex:
    """IVF-Flat over the first ``n`` rows of a growing matrix; ``sync`` keeps it current."""

    def __init__(self, dim: int, nprobe: int = 32, seed: int = 0):
        import faiss

        faiss.omp_set_num_threads(1)  # one per ranker subtask: parallelism comes from Flink
        self._faiss = faiss
        self.dim = dim
        self.nprobe = nprobe
        self.seed = seed
        self.index = None
        self.indexed = 0  # rows [0, indexed) are in the index
        self.trained_on = 0

    def sync(self, matrix: np.ndarray, n: int, changed: bool = False) -> None:
        """Bring the index up to rows [0, n) of ``matrix``: train (again) when there is no
        index yet, when the catalog has doubled since training, or when rows already in it
        ``changed``; otherwise add the new rows."""
        if n == 0:
            return
        if self.index is None or changed or n >= 2 * self.trained_on:
            self._train(matrix[:n])
        elif n > self.indexed:
            self.index.add(np.ascontiguousarray(matrix[self.indexed:n], dtype=np.float32))
            self.indexed = n

    def _train(self, rows: np.ndarray) -> None:
        faiss = self._faiss
        n = rows.shape[0]
        nlist = nlist_for(n)
        # The coarse quantizer (which lists to scan) is itself a small HNSW graph over the list
        # centroids: a flat one scanned all ~4 sqrt(n) centroids per query, about half the
        # search time at 100,000 rows.
        quantizer = faiss.IndexHNSWFlat(self.dim, 32, faiss.METRIC_INNER_PRODUCT)
        quantizer.hnsw.efSearch = max(64, 4 * self.nprobe)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(self.seed)
        sample = rows if n <= nlist * TRAIN_POINTS_PER_LIST else \
            rows[np.sort(rng.choice(n, nlist * TRAIN_POINTS_PER_LIST, replace=False))]
        index.cp.seed = self.seed
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        index.add(np.ascontiguousarray(rows, dtype=np.float32))
        index.nprobe = min(self.nprobe, nlist)
        self.index, self.indexed, self.trained_on = index, n, n

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Rows of the ~``k`` nearest items of each query row, all queries together (unique,
        unsorted)."""
        if self.index is None or self.indexed == 0 or k <= 0:
            return np.empty(0, dtype=np.int64)
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        _, ids = self.index.search(q, min(k, self.indexed))
        ids = ids.ravel()
        return np.unique(ids[ids >= 0])
