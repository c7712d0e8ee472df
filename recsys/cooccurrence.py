"""The catalog's co-occurrence neighbour lists: for each item, the items consumed with it
and how often, kept in step with the item branch's counts and laid out for vectorised
scoring. A part of :class:`recsys.catalog.CatalogIndex` (a base class of it), in a module of
its own; it reads the catalog's ``row`` map (id -> row)."""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np


_NONE: dict = {}


class CooccurrenceLists:
    """Neighbour lists under catalog ids. ``neighbours``: item -> {neighbour id: count}, with
    a cache of the same as (rows, counts) arrays for scoring (:meth:`neighbour_arrays`);
    ``earlier``: the halves the counts are summed from (see :meth:`set_cooccurrence`)."""

    row: dict[str, int]  # the catalog's id -> row

    def _init_cooccurrence(self) -> None:
        self.neighbours: dict[str, dict[str, float]] = {}
        self.earlier: dict[str, dict[str, float]] = {}
        self._nbr_arrays: dict[str, _NeighbourArrays] = {}
        # id not in the catalog -> the catalog items whose halves count it (see
        # set_cooccurrence): its neighbour list is built when it arrives.
        self._waiting: dict[str, set[str]] = {}

    def _forget_pairs(self, item_id: str) -> None:
        """A deleted item's half and list go (its partners' lists keep their counts)."""
        for x in self.earlier.pop(item_id, {}):
            waiting = self._waiting.get(x)
            if waiting is not None:
                waiting.discard(item_id)
                if not waiting:
                    del self._waiting[x]
        self.neighbours.pop(item_id, None)
        self._nbr_arrays.pop(item_id, None)

    def set_neighbours(self, item_id: str, neighbours: dict[str, float]) -> None:
        """Set one item's neighbour counts directly (tests and tools; the job and eval use
        :meth:`set_cooccurrence`)."""
        self.neighbours[item_id] = neighbours
        self._nbr_arrays.pop(item_id, None)

    def set_cooccurrence(self, item_id: str, earlier: dict[str, float],
                         changed: Optional[Iterable[str]] = None,
                         max_neighbours: int = 200) -> None:
        """One item's half of the co-occurrence counts: how often each item x was in a
        user's recent history when ``item_id`` was consumed. Each pair is counted once, under
        the item consumed later (one keyed update per event instead of one per history
        item); the count of the pair {i, x} is i's count of x plus x's count of i, and
        ``neighbours`` holds it for both items.

        ``changed``: the only keys whose count changed or that left ``earlier`` (then
        ``earlier`` may be the same dict as before, updated in place); without it every key
        of the previous and the new dict is recomputed, so ``earlier`` must be a new dict.

        A popular item is in the halves of thousands of items: its neighbour list is kept to
        the heaviest ``max_neighbours`` whenever it grows past twice that (the rule the halves
        follow); a pair pruned here comes back, with its full count, when it is counted again."""
        old = self.earlier.get(item_id, {})
        halves, row = self.earlier, self.row
        halves[item_id] = earlier
        if changed is None:  # in a fixed order: neighbour dicts keep insertion order
            changed = [x for x, c in earlier.items() if old.get(x) != c] + \
                [x for x in old if x not in earlier]
        for x in changed:
            total = earlier.get(x, 0.0) + halves.get(x, _NONE).get(item_id, 0.0)
            if x in row:
                self._set_pair(item_id, x, total, max_neighbours)
                self._set_pair(x, item_id, total, max_neighbours)
                continue
            # not an item (yet): no list under its id, remember the pair
            waiting = self._waiting.setdefault(x, set())
            if x in earlier:
                waiting.add(item_id)
            else:
                waiting.discard(item_id)
                if not waiting:
                    del self._waiting[x]
            self._set_pair(item_id, x, total, max_neighbours)

    def _set_pair(self, a: str, b: str, total: float, max_neighbours: int) -> None:
        """``a``'s list: ``b`` at ``total`` (gone at 0), its arrays patched or dropped."""
        nbrs = self.neighbours.get(a)
        if total <= 0:
            if nbrs is not None and nbrs.pop(b, None) is not None:
                self._leave_arrays(a, b)
            return
        if nbrs is None:
            nbrs = self.neighbours[a] = {}
        nbrs[b] = total
        if len(nbrs) > 2 * max_neighbours:
            keep = sorted(nbrs.items(), key=lambda kv: -kv[1])[:max_neighbours]
            nbrs.clear()
            nbrs.update(keep)
            self._nbr_arrays.pop(a, None)  # a new order: rebuilt when next used
            return
        cached = self._nbr_arrays.get(a)
        if cached is None:
            return
        slot = cached.slot.get(b)
        if slot is not None:  # the arrays in step with one changed count, in place
            cached.counts[slot] = total
            if cached.dead:
                cached.dead.discard(b)
        elif len(nbrs) != cached.size - len(cached.dead) + cached.unknown + 1:
            self._nbr_arrays.pop(a, None)  # a known id's count, not in the arrays: rebuild
        elif (rb := self.row.get(b)) is not None:
            cached.append(rb, total, b)
        else:
            cached.unknown += 1

    def _leave_arrays(self, a: str, b: str) -> None:
        """``b`` left ``a``'s list: its slot in ``a``'s arrays stays, at count 0 (a zero adds
        nothing to a score, a maximum or a reason), until half the slots are such."""
        cached = self._nbr_arrays.get(a)
        if cached is None:
            return
        slot = cached.slot.get(b)
        if slot is not None:
            cached.counts[slot] = 0.0
            cached.dead.add(b)
            if 2 * len(cached.dead) > cached.size:
                del self._nbr_arrays[a]
        elif b in self.row:  # a known id missing from the arrays: rebuild them
            del self._nbr_arrays[a]
        else:
            cached.unknown -= 1

    def _complete_pairs(self, item_id: str) -> None:
        """A new item: build its neighbour list from the halves that counted it while it was
        not in the catalog."""
        partners = self._waiting.pop(item_id, ())
        if not partners:
            return
        nbrs = self.neighbours.setdefault(item_id, {})
        mine = self.earlier.get(item_id, {})
        for i in partners:
            total = self.earlier.get(i, {}).get(item_id, 0.0) + mine.get(i, 0.0)
            if total > 0:
                nbrs[i] = total
        self._nbr_arrays.pop(item_id, None)

    def copy_cooccurrence(self, other: "CooccurrenceLists") -> None:
        """Take over another catalog's co-occurrence counts (a model swap's new catalog)."""
        self.earlier = {k: dict(v) for k, v in other.earlier.items()}
        self.neighbours = {k: dict(v) for k, v in other.neighbours.items()}
        self._nbr_arrays.clear()

    def neighbour_arrays(self, item_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(rows, counts) of an item's known neighbours that are in the catalog, and of some
        that have left its list, at count 0 (see :meth:`_leave_arrays`)."""
        cached = self._nbr_arrays.get(item_id)
        if cached is not None and cached.view is not None:
            return cached.view
        if cached is None:
            nbrs = self.neighbours.get(item_id, {})
            get = self.row.get
            rows = np.array([get(y, -1) for y in nbrs], dtype=np.int64)
            counts = np.array(list(nbrs.values()), dtype=np.float64)
            known = rows >= 0
            ids = [y for y, k in zip(nbrs, known.tolist()) if k]
            cached = self._nbr_arrays[item_id] = _NeighbourArrays(
                rows[known], counts[known], ids, int((~known).sum()))
        cached.view = (cached.rows[:cached.size], cached.counts[:cached.size])
        return cached.view

    def neighbour_arrays_of(self, item_ids) -> list:
        """:meth:`neighbour_arrays` of each item (a user's history: one call per user)."""
        get, build = self._nbr_arrays.get, self.neighbour_arrays
        out = []
        for x in item_ids:
            cached = get(x)
            out.append(cached.view if cached is not None and cached.view is not None
                       else build(x))
        return out


class _NeighbourArrays:
    """An item's neighbours as growable (rows, counts) arrays for vectorised scoring, with
    each neighbour id's slot so that a changed count is patched in place; ``dead``: the ids
    whose slot stays at count 0 after they left the list (in place of a rebuild); ``view``
    the (rows, counts) in use, as read (None until read again after an append)."""

    __slots__ = ("rows", "counts", "size", "slot", "unknown", "dead", "view")

    def __init__(self, rows: np.ndarray, counts: np.ndarray, ids: list[str], unknown: int):
        self.size = len(ids)
        cap = max(8, 2 * self.size)
        self.rows = np.zeros(cap, np.int64)
        self.counts = np.zeros(cap, np.float64)
        self.rows[: self.size], self.counts[: self.size] = rows, counts
        self.slot = {y: i for i, y in enumerate(ids)}
        self.unknown = unknown  # neighbour ids not in the catalog (not in the arrays)
        self.dead: set[str] = set()
        self.view: Optional[tuple] = None

    def append(self, row: int, count: float, item_id: str) -> None:
        if self.size == self.rows.shape[0]:
            self.rows = np.concatenate([self.rows, np.zeros(self.size, np.int64)])
            self.counts = np.concatenate([self.counts, np.zeros(self.size)])
        self.rows[self.size], self.counts[self.size] = row, count
        self.slot[item_id] = self.size
        self.size += 1
        self.view = None
