"""The ranker's copy of the catalog: what arrives by broadcast (item vectors, deletions, item
statistics, co-occurrence neighbours), kept both in broadcast state (for checkpoints) and in
:class:`CatalogIndex` objects (for scoring), with the switch to a new embedding model.

While a new model's vectors arrive, they fill a staging catalog beside the active one;
rankings keep using the active catalog until the staging one holds every live item, then
switch at once.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Optional

import numpy as np

from operators.codecs import STATS, pack_catalog_entry, unpack_catalog_entry, unpack_stats_batch
from operators.types import (CATALOG_STATE, MODELS_STATE, NEIGHBOURS_STATE, POPULARITY_STATE,
                             STAGING_STATE)
from recsys.catalog import CatalogIndex
from recsys.item_stats import count_entries, unpack_counts

log = logging.getLogger("streamrank.operators")


class CatalogMirror:
    """``slice_pairs``: co-occurrence entries merged per call (see :meth:`merge_some`); 0 =
    each batch at once."""

    def __init__(self, model_id: str, max_neighbours: int, slice_pairs: int = 0):
        self.model_id = model_id  # the configured model, until the catalog names one
        self.max_neighbours = max_neighbours
        self.slice_pairs = slice_pairs
        # Co-occurrence halves received but not merged yet, oldest first:
        # (item_id, counts, changes or None, entries to merge).
        self._unmerged: deque = deque()
        self.catalog = CatalogIndex()  # the active model's catalog: what rankings use
        self.active_model: str | None = None
        self.staging: CatalogIndex | None = None  # a new model's catalog while it fills up
        self.staging_model: str | None = None
        self.missing: set[str] = set()  # active items the staging catalog still lacks
        self.restored = False
        self._states: dict = {}  # descriptor name -> its broadcast state (see _state)

    @property
    def model(self) -> str:
        return self.active_model or self.model_id

    def catalogs(self) -> list[CatalogIndex]:
        return [self.catalog] + ([self.staging] if self.staging is not None else [])

    def restore(self, ctx) -> None:
        """After a restore the broadcast state holds the catalog(s); rebuild the indexes
        (once, on the first element or timer)."""
        if self.restored:
            return
        self.restored = True
        models = ctx.get_broadcast_state(MODELS_STATE)
        self.active_model = models.get("active")
        self.staging_model = models.get("staging")
        n = 0
        for item_id, packed in ctx.get_broadcast_state(CATALOG_STATE).items():
            self.catalog.upsert(item_id, *unpack_catalog_entry(packed))
            n += 1
        if self.staging_model:
            self._start_staging(self.staging_model)
            for item_id, packed in ctx.get_broadcast_state(STAGING_STATE).items():
                self.staging.upsert(item_id, *unpack_catalog_entry(packed))
                self.missing.discard(item_id)
        for item_id, packed in ctx.get_broadcast_state(POPULARITY_STATE).items():
            for cat in self.catalogs():
                cat.set_popularity(item_id, *STATS.unpack(packed))
        for item_id, encoded in ctx.get_broadcast_state(NEIGHBOURS_STATE).items():
            for cat in self.catalogs():
                cat.set_cooccurrence(item_id, unpack_counts(encoded),
                                     max_neighbours=self.max_neighbours)
        if n:
            log.info("rank-users restored a catalog of %d items (model %s) from state", n,
                     self.active_model)

    def _state(self, ctx, descriptor):
        """The writable broadcast state of ``descriptor``. The backend keeps one object per
        state for the operator's life; PyFlink's ``get_broadcast_state`` converts the
        descriptor to Java at every call (~85 us in thread mode, measured), so it is asked
        once per state. Only from ``process_broadcast_element`` (the writable context)."""
        state = self._states.get(descriptor.name)
        if state is None:
            state = self._states[descriptor.name] = ctx.get_broadcast_state(descriptor)
        return state

    def apply(self, update, ctx) -> None:
        """One broadcast update: ``item``, ``delete`` or ``stats`` (a batch of item
        statistics from the item branch)."""
        kind = update["kind"]
        if kind == "stats":
            self._stats(unpack_stats_batch(update["neighbours"]), ctx)
            self.merge_some()
            return
        self.merge_some(everything=True)  # the catalog changes after what came before
        if kind == "item":
            self._item(update, ctx)
        elif kind == "delete":
            self._delete(update["item_id"], ctx)

    def merge_some(self, everything: bool = False) -> None:
        """Merge received co-occurrence halves into the catalogs, oldest first: about
        ``slice_pairs`` changed entries (at least one item's), or all of them."""
        queue = self._unmerged
        budget = self.slice_pairs if self.slice_pairs > 0 and not everything else None
        while queue:
            item_id, counts, changes, n = queue.popleft()
            if self._in_catalog(item_id):
                delta = unpack_counts(changes) if changes is not None else None  # (once)
                for cat in self.catalogs():
                    self._counts(cat, item_id, counts, delta)
            if budget is not None:
                budget -= n
                if budget <= 0:
                    return

    @property
    def merge_backlog(self) -> int:
        """Items whose received co-occurrence counts are not merged yet."""
        return len(self._unmerged)

    def _stats(self, entries: list, ctx) -> None:
        """A batch of ``(item_id, log_pop, count, counts or None, changes or None)``
        (``codecs.pack_stats_batch``): popularity into every catalog at once, co-occurrence
        counts queued for :meth:`merge_some`; both into broadcast state with one call per
        state."""
        pops, halves = {}, {}
        for item_id, log_pop, count, counts, changes in entries:
            if not self._in_catalog(item_id):
                continue  # catalog items only (the item branch sends no others)
            for cat in self.catalogs():
                cat.set_popularity(item_id, log_pop, count)
            pops[item_id] = STATS.pack(log_pop, count)
            if counts is not None:
                halves[item_id] = counts = bytes(counts)
                changes = bytes(changes) if changes is not None else None
                n = count_entries(counts if changes is None else changes)
                self._unmerged.append((item_id, counts, changes, n))
        if pops:
            self._state(ctx, POPULARITY_STATE).put_all(pops)
        if halves:
            self._state(ctx, NEIGHBOURS_STATE).put_all(halves)

    def _counts(self, cat: CatalogIndex, item_id: str, counts: bytes,
                delta: Optional[dict[str, float]]) -> None:
        """An item's co-occurrence half into ``cat``: only the changed entries (``delta``,
        read-only here) when the catalog holds the half they change (the item branch sent it,
        in order, before), else the whole (each catalog its own dict: they are kept and
        changed in place)."""
        half = cat.earlier.get(item_id)
        if delta is None or half is None:
            cat.set_cooccurrence(item_id, unpack_counts(counts),
                                 max_neighbours=self.max_neighbours)
            return
        for x, c in delta.items():
            if c > 0:
                half[x] = c
            else:
                half.pop(x, None)
        cat.set_cooccurrence(item_id, half, changed=delta, max_neighbours=self.max_neighbours)

    def _item(self, update, ctx) -> None:
        item_id, model = update["item_id"], update["model"] or self.model_id
        vec = np.frombuffer(bytes(update["vector"]), dtype=np.float32)
        published = update["published_ts"] or 0
        packed = pack_catalog_entry(update["title"], update["vector"], published)
        if self.active_model is None:
            self.active_model = model
            self._state(ctx, MODELS_STATE).put("active", model)
        if model == self.active_model:
            self.catalog.upsert(item_id, update["title"], vec, published)
            self._state(ctx, CATALOG_STATE).put(item_id, packed)
            return
        if model != self.staging_model:
            self._start_staging(model)
            self._state(ctx, STAGING_STATE).clear()
            self._state(ctx, MODELS_STATE).put("staging", model)
        self.staging.upsert(item_id, update["title"], vec, published)
        self._state(ctx, STAGING_STATE).put(item_id, packed)
        self.missing.discard(item_id)
        if not self.missing:
            self._switch_model(ctx)

    def _delete(self, item_id: str, ctx) -> None:
        for cat in self.catalogs():
            cat.delete(item_id)
        for descriptor in (CATALOG_STATE, POPULARITY_STATE, NEIGHBOURS_STATE):
            self._state(ctx, descriptor).remove(item_id)
        if self.staging is not None:
            self._state(ctx, STAGING_STATE).remove(item_id)
            self.missing.discard(item_id)
            if not self.missing and len(self.staging):
                self._switch_model(ctx)

    def _in_catalog(self, item_id: str) -> bool:
        return any(item_id in cat.row and not cat.is_deleted(item_id)
                   for cat in self.catalogs())

    def _start_staging(self, model: str) -> None:
        """A new model's vectors start arriving: build its catalog beside the active one,
        with the item statistics known so far."""
        self.staging_model = model
        self.staging = CatalogIndex()
        old = self.catalog
        for r, item_id in enumerate(old.ids[: old.size]):
            self.staging.set_popularity(item_id, float(old.log_pop[r]), float(old.count[r]))
        self.staging.copy_cooccurrence(old)
        self.missing = {i for i in old.ids[: old.size] if old.vector(i) is not None}
        log.info("rank-users: model swap %s -> %s started (%d items to re-embed)",
                 self.active_model, model, len(self.missing))

    def _switch_model(self, ctx) -> None:
        log.info("rank-users: catalog of model %s complete (%d items); rankings switch from "
                 "%s", self.staging_model, len(self.staging), self.active_model)
        self.catalog, self.active_model = self.staging, self.staging_model
        self.staging, self.staging_model, self.missing = None, None, set()
        active, staging = self._state(ctx, CATALOG_STATE), \
            self._state(ctx, STAGING_STATE)
        active.clear()
        active.put_all({k: v for k, v in staging.items()})
        staging.clear()
        models = self._state(ctx, MODELS_STATE)
        models.put("active", self.active_model)
        models.remove("staging")
