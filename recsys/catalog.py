"""In-memory catalog of item embeddings and popularity, laid out for fast scoring.

Rows of one contiguous float32 matrix (L2-normalised embeddings), an id -> row map, titles,
a deleted mask and log-popularity. A deleted item keeps its row, excluded from every ranking,
until a new item takes it over, so memory follows the live catalog. Pure numpy; the Flink
ranker mirrors it in broadcast state.

Memory is bounded by the catalog, whatever ids events carry: statistics are kept for catalog
rows only, and co-occurrence lists (``recsys/cooccurrence.py``) only under catalog ids (a
pair with an id not in the catalog is remembered by that id's partner, and completed when
the id arrives).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from recsys.cooccurrence import CooccurrenceLists
from recsys.ranking import rel_log
from recsys.user_state import item_key


class CatalogIndex(CooccurrenceLists):
    def __init__(self, dim: Optional[int] = None, capacity: int = 1024):
        self.dim = dim
        self._capacity = capacity
        self.matrix = np.zeros((0, dim or 0), dtype=np.float32)
        self.ids: list[str] = []
        self.titles: list[str] = []
        self.row: dict[str, int] = {}
        self.deleted = np.zeros(0, dtype=bool)
        self.log_pop = np.full(0, -math.inf)
        self.count = np.zeros(0)  # interactions per item (co-occurrence normalisation)
        self.keys = np.zeros(0, np.uint64)  # each row's item key (user_state.item_key)
        # Each row's publication time (epoch ms, before 1970 negative; 0 = none given, always
        # rankable): an item is not ranked for an event before it, and is fresh after it.
        self.published = np.zeros(0, np.int64)
        self._published_version = 0
        self._by_published: tuple = (-1, np.empty(0, np.int64), np.empty(0, np.int64))
        self._key_index: tuple = (-1, None, None)  # (ids version, sorted keys, their rows)
        self._ids_version = 0
        self._early_pop: dict[str, tuple[float, float]] = {}  # stats of items not embedded yet
        self._init_cooccurrence()
        self._n = 0
        self.vectors_version = 0  # bumped whenever a row's vector changes (kernel caches)
        self._free: list[int] = []  # deleted rows a new item may take over
        # Recently deleted ids (after their row is taken over too), oldest first, bounded.
        self._gone: dict[str, None] = {}
        # Candidate retrieval (large catalogs only): the ANN index, built on first use, and
        # the most popular/trending rows, recomputed when the statistics change.
        self._ann = None
        self._ann_changed = False
        self._stats_version = 0
        self._rel_counts: tuple = (None, np.zeros(0))
        self._norms: tuple = (None, np.zeros(0))
        self._maxima: tuple = (None, (0.0, -math.inf))
        self._popular: tuple[int, int, np.ndarray] = (-1, 0, np.empty(0, np.int64))

    def __len__(self) -> int:
        """Number of live (not deleted) items."""
        return self._n - int(self.deleted[: self._n].sum())

    @property
    def size(self) -> int:
        """Number of rows, deleted included."""
        return self._n

    def _grow(self, need: int) -> None:
        cap = max(self._capacity, 1)
        while cap < need:
            cap *= 2
        if cap == self.matrix.shape[0]:
            return
        mat = np.zeros((cap, self.dim), dtype=np.float32)
        mat[: self._n] = self.matrix[: self._n]
        self.matrix = mat
        self.deleted = np.concatenate([self.deleted[: self._n], np.zeros(cap - self._n, bool)])
        self.log_pop = np.concatenate([self.log_pop[: self._n],
                                       np.full(cap - self._n, -math.inf)])
        self.count = np.concatenate([self.count[: self._n], np.zeros(cap - self._n)])
        self.keys = np.concatenate([self.keys[: self._n], np.zeros(cap - self._n, np.uint64)])
        self.published = np.concatenate([self.published[: self._n],
                                         np.zeros(cap - self._n, np.int64)])
        self._capacity = cap

    def upsert(self, item_id: str, title: str, vector: np.ndarray,
               published_ts: int = 0) -> int:
        """Insert or replace an item's embedding (and publication time, epoch ms: 0 for
        none); returns its row."""
        vec = np.asarray(vector, dtype=np.float32)
        if self.dim is None or self._n == 0:
            if self.dim != vec.shape[0]:
                self.dim = int(vec.shape[0])
                self.matrix = np.zeros((0, self.dim), dtype=np.float32)
        if vec.shape != (self.dim,):
            raise ValueError(f"item {item_id}: vector has shape {vec.shape}, catalog dim "
                             f"is {self.dim}")
        norm = float(np.linalg.norm(vec))
        if norm > 0:
            vec = vec / norm
        r = self.row.get(item_id)
        self._gone.pop(item_id, None)
        if r is None:
            r = self._new_row(item_id, title)
            if item_id in self._early_pop:
                self.log_pop[r], self.count[r] = self._early_pop.pop(item_id)
            self._nbr_arrays.clear()  # a new row may resolve neighbour ids
            self._complete_pairs(item_id)
        else:
            self.titles[r] = title
            if self._ann is not None and r < self._ann.indexed and \
                    not np.array_equal(self.matrix[r], vec):
                self._ann_changed = True
        self.matrix[r] = vec
        self.deleted[r] = False
        self.vectors_version += 1
        if self.published[r] != published_ts:
            self.published[r] = published_ts
            self._published_version += 1
        return r

    def _new_row(self, item_id: str, title: str) -> int:
        """A row for a new item: a deleted item's row if there is one (that item leaves the
        catalog for good), else the next one."""
        while self._free:
            r = self._free.pop()
            old = self.ids[r]
            if self.deleted[r] and self.row.get(old) == r:
                del self.row[old]
                self.ids[r], self.titles[r] = item_id, title
                self.row[item_id] = r
                self.keys[r] = item_key(item_id)
                self._ids_version += 1
                self.log_pop[r], self.count[r] = -math.inf, 0.0
                self._stats_version += 1
                if self._ann is not None and r < self._ann.indexed:
                    self._ann_changed = True
                return r
        if self._n >= self.matrix.shape[0]:
            self._grow(self._n + 1)
        r = self._n
        self._n += 1
        self.row[item_id] = r
        self.keys[r] = item_key(item_id)
        self._ids_version += 1
        self.ids.append(item_id)
        self.titles.append(title)
        return r

    def delete(self, item_id: str) -> bool:
        r = self.row.get(item_id)
        if r is None:
            return False
        if not self.deleted[r]:
            self.deleted[r] = True
            self._free.append(r)
            self._gone[item_id] = None
            if len(self._gone) > self.MAX_GONE:
                del self._gone[next(iter(self._gone))]
            self._forget_pairs(item_id)  # its statistics leave with it (the item branch's too)
        return True

    def set_popularity(self, item_id: str, log_pop: float, count: float = 0.0) -> None:
        r = self.row.get(item_id)
        if r is None:
            self._early_pop[item_id] = (log_pop, count)
        else:
            self.log_pop[r] = log_pop
            self.count[r] = count
            self._stats_version += 1

    MAX_GONE = 100_000

    def is_deleted(self, item_id: str) -> bool:
        """Whether the item was in the catalog and has been deleted (one of the last
        ``MAX_GONE`` deletions, once its row has been taken over)."""
        r = self.row.get(item_id)
        return bool(self.deleted[r]) if r is not None else item_id in self._gone

    def vector(self, item_id: str) -> Optional[np.ndarray]:
        """The item's normalised embedding, or None when unknown or deleted."""
        r = self.row.get(item_id)
        if r is None or self.deleted[r]:
            return None
        return self.matrix[r]

    def live_matrix(self) -> np.ndarray:
        """View of the filled rows (deleted rows included; mask them with ``deleted``)."""
        return self.matrix[: self._n]

    def rows_of_keys(self, keys: np.ndarray) -> np.ndarray:
        """The rows of the items with those keys (``user_state.item_key``) that are in the
        catalog: one binary search of all of them in the sorted row keys."""
        if keys.size == 0 or self._n == 0:
            return np.empty(0, np.int64)
        version, sorted_keys, rows = self._key_index
        if version != self._ids_version:
            rows = np.argsort(self.keys[: self._n], kind="stable")
            sorted_keys = self.keys[: self._n][rows]
            self._key_index = (self._ids_version, sorted_keys, rows)
        at = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
        return rows[at[sorted_keys[at] == keys]]

    def exclusion_mask(self, seen_keys: np.ndarray, now_ts: Optional[int] = None) -> np.ndarray:
        """Deleted rows, the rows of the seen items' keys and, given ``now_ts``, the rows
        not published by then."""
        mask = self.deleted[: self._n].copy()
        mask[self.rows_of_keys(seen_keys)] = True
        if now_ts is not None:
            mask[self.unpublished_rows(now_ts)] = True
        return mask

    def unpublished_rows(self, now_ts: int) -> np.ndarray:
        """The rows of items published after ``now_ts`` (not to be ranked yet)."""
        times, rows = self._published_order()
        if times.size == 0 or times[-1] <= now_ts:
            return rows[:0]
        return rows[np.searchsorted(times, now_ts, side="right"):]

    def published_since(self, now_ts: int, horizon_ms: float) -> tuple:
        """(rows, ages in ms) of the items published in the ``horizon_ms`` up to ``now_ts``."""
        times, rows = self._published_order()
        lo, hi = np.searchsorted(times, [now_ts - horizon_ms, now_ts], side="right")
        return rows[lo:hi], now_ts - times[lo:hi]

    @property
    def published_version(self) -> int:
        """Bumped whenever a row's publication time changes (caches of derived terms)."""
        return self._published_version

    def _published_order(self) -> tuple:
        """(publication times, rows) of the rows that have one, by time; once per change."""
        version, times, rows = self._by_published
        if version != self._published_version:
            pub = self.published[: self._n]
            rows = np.flatnonzero(pub)
            rows = rows[np.argsort(pub[rows], kind="stable")]
            times = pub[rows]
            self._by_published = (self._published_version, times, rows)
        return times, rows

    @property
    def stats_version(self) -> int:
        """Bumped whenever an item's statistics change (caches of derived vectors)."""
        return self._stats_version

    def relative_log_counts(self) -> np.ndarray:
        """log1p(count) of every row relative to the largest (the popularity feature); the
        same for every user, so computed once per change of the statistics."""
        stamp = (self._stats_version, self._n)
        if self._rel_counts[0] != stamp:
            counts = self.counts()
            self._rel_counts = (stamp, rel_log(counts, float(counts.max()) if counts.size
                                               else 0.0))
        return self._rel_counts[1]

    def relative_log_count(self, r: int) -> float:
        """Row ``r``'s value of :meth:`relative_log_counts`, without computing the others."""
        if self._rel_counts[0] == (self._stats_version, self._n):
            return float(self._rel_counts[1][r])
        return float(rel_log(self.counts()[r:r + 1], self.maxima()[0])[0])

    def maxima(self) -> tuple[float, float]:
        """(largest interaction count, largest log-popularity) over the catalog, computed
        once per change of the statistics: the scales one item's features are read on
        (the per-event step reads single items between changes)."""
        stamp = (self._stats_version, self._n)
        if self._maxima[0] != stamp:
            counts, lp = self.counts(), self.popularity()
            self._maxima = (stamp, (float(counts.max()) if counts.size else 0.0,
                                    float(lp.max()) if lp.size else -math.inf))
        return self._maxima[1]

    def count_norms(self) -> np.ndarray:
        """sqrt(max(count, 1)) of every row: what co-occurrence scores are divided by
        (``scoring.cooc_row``), computed once per change of the statistics."""
        stamp = (self._stats_version, self._n)
        if self._norms[0] != stamp:
            self._norms = (stamp, np.sqrt(np.maximum(self.counts(), 1.0)))
        return self._norms[1]

    def popularity(self) -> np.ndarray:
        return self.log_pop[: self._n]

    def counts(self) -> np.ndarray:
        return self.count[: self._n]

    # -- candidate retrieval -----------------------------------------------------------------

    def ann_rows(self, queries: np.ndarray, k: int, nprobe: int = 32) -> np.ndarray:
        """Rows of about the ``k`` nearest items of each query vector (deleted included)."""
        from recsys.retrieval import AnnIndex

        if self._ann is None or self._ann.dim != self.dim:
            self._ann = AnnIndex(self.dim, nprobe=nprobe)
        self._ann.nprobe = nprobe
        self._ann.sync(self.matrix, self._n, changed=self._ann_changed)
        self._ann_changed = False
        return self._ann.search(queries, k)

    def popular_rows(self, k: int) -> np.ndarray:
        """The ``k`` rows with the most interactions and the ``k`` most trending ones (the
        trending order is the order of ``log_pop`` at any time: the decay is common), as of
        the last refresh."""
        version, size, rows = self._popular
        # Refreshed when 1% of the catalog's statistics have changed since (or rows were
        # added): two partial sorts of the whole catalog per ranking cost more than the rest of
        # a large catalog's candidate stage.
        if size == self._n and rows.size and \
                self._stats_version - version < max(1, self._n // 100):
            return rows
        n = self._n
        picks = []
        for values in (self.count[:n], self.log_pop[:n]):
            kk = min(k, n)
            if kk > 0:
                top = np.argpartition(-values, kk - 1)[:kk] if kk < n else np.arange(n)
                picks.append(top[np.isfinite(values[top])])
        rows = np.unique(np.concatenate(picks)) if picks else np.empty(0, np.int64)
        self._popular = (self._stats_version, n, rows)
        return rows
