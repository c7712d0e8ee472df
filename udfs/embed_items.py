"""The embedding operator: catalog records -> catalog updates carrying each item's vector,
through the cached embedder beside it (``udfs/embedding.py``)."""

from __future__ import annotations

import json
import logging
import time
from typing import Iterable

import numpy as np
from pyflink.common import Row, Types
from pyflink.datastream.functions import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, MapStateDescriptor, ValueStateDescriptor

from operators.common import LoggedOpen, now_ms
from operators.flink_metrics import LatencyWindow, OperatorMetrics
from operators.types import DEAD_LETTER_KIND, ITEM_TYPE
from contracts.config import ModelSettings
from contracts.messages import InvalidRecord, dlq_record

log = logging.getLogger("streamrank.operators")


class EmbedItems(KeyedProcessFunction, LoggedOpen):
    """Items (keyed by embedding bucket) -> catalog updates carrying the item's embedding.

    The model is loaded in ``open()`` (retried; a clear error if it cannot be). Cache hits
    pass straight through. Misses are buffered in keyed state (so a checkpoint never loses
    them) and embedded together when ``batch_size`` are waiting or ``batch_timeout_ms`` after
    the first, whichever comes first. Order per key is kept: once something is buffered,
    later items queue behind it. A text the model fails on, or whose vector has the wrong
    shape or non-finite values, goes to the items DLQ (``embedding_failed``/``bad_vector``)
    and never reaches the catalog; the job keeps running.

    Live model swap: each bucket keeps its items' texts and the model that embedded them. A
    recurring timer (``reembed_interval_ms``, kept in checkpoints and savepoints) notices when
    the job was restarted with another model and re-embeds the bucket's items in the
    background, ``batch_size`` per tick; the rankers keep ranking with the old vectors until
    the new model's catalog is complete.
    """

    def __init__(self, model: ModelSettings, items_topic: str = "items",
                 dlq_max_raw_bytes: int = 65_536):
        self.model = model
        self.items_topic = items_topic
        self.dlq_max_raw_bytes = dlq_max_raw_bytes

    def open(self, ctx: RuntimeContext) -> None:
        from udfs.embedding import CachedEmbedder

        self._log_open(ctx, "embed-items")
        # Loaded now, retried; when it cannot be, the task fails with a clear error and
        # Flink's restart strategy tries again.
        self.embedder = CachedEmbedder.from_settings(self.model)
        self.embedder.check_configuration()
        self.embedder.load()
        self.model_id = self.embedder.model_id
        self.buffer = ctx.get_list_state(ListStateDescriptor("pending-items", ITEM_TYPE))
        self.count = ctx.get_state(ValueStateDescriptor("pending-count", Types.INT()))
        self.texts = ctx.get_map_state(
            MapStateDescriptor("item-texts", Types.STRING(), Types.STRING()))
        self.bucket_model = ctx.get_state(ValueStateDescriptor("bucket-model", Types.STRING()))
        self.reembed = ctx.get_state(ValueStateDescriptor("reembed-ids", Types.STRING()))
        self.tick = ctx.get_state(ValueStateDescriptor("reembed-tick", Types.LONG()))
        m = OperatorMetrics(ctx)
        self.g_hit_pct = m.value("cache_hit_pct")
        self.g_embedded = m.value("embedded_texts")
        self.g_hits = m.value("cache_hits")
        self.batch_ms = LatencyWindow(m, "embed_batch_ms", size=256, every=1)
        self.reembedded = m.counter("reembedded_items")
        self.failed = m.counter("embedding_dlq")

    def close(self) -> None:
        embedder = getattr(self, "embedder", None)
        if embedder is not None:
            s = embedder.stats
            log.info("embed-items closing: %d cache hits, %d embedded in %.1fs", s.hits,
                     s.misses, s.embed_seconds)
            embedder.close()

    def _report(self) -> None:
        stats = self.embedder.stats
        total = stats.hits + stats.misses
        self.g_hit_pct.set(100 * stats.hits / total if total else 0)
        self.g_embedded.set(stats.misses)
        self.g_hits.set(stats.hits)

    def _update(self, item_id: str, title: str, deleted: bool, vector,
                published_ts: int = 0) -> Row:
        if deleted:
            return Row("delete", item_id, "", None, None, None, None, None, None)
        return Row("item", item_id, title, np.asarray(vector, np.float32).tobytes(),
                   None, None, None, self.model_id, published_ts)

    def _dead_letter(self, item_id: str, title: str, text: str, reason: str,
                     partition: int = -1, offset: int = -1):
        """An item whose text could not be embedded: to the items DLQ, never the catalog."""
        self.failed.inc()
        code, _, detail = reason.partition(": ")
        raw = json.dumps({"item_id": item_id, "title": title, "text": text},
                         ensure_ascii=False).encode("utf-8", "backslashreplace")
        letter = dlq_record(InvalidRecord(code, detail), raw, self.items_topic,
                            -1 if partition is None else partition,
                            -1 if offset is None else offset, now_ms(),
                            max_raw_bytes=self.dlq_max_raw_bytes)
        # On the main output, not a side output: see jobs/ranking_job.py.
        return Row(DEAD_LETTER_KIND, item_id, "", letter, None, None, None, None, None)

    def _embedded(self, items: list) -> Iterable:
        """Catalog updates for ``items`` (``(item_id, title, text, partition, offset,
        published_ts)``), with a dead letter for each text that could not be embedded."""
        if not items:
            return
        t0 = time.perf_counter()
        results = self.embedder.embed_each([it[2] for it in items])
        self.batch_ms.update((time.perf_counter() - t0) * 1000)
        self._report()
        for (item_id, title, text, partition, offset, published), (vec, reason) in \
                zip(items, results):
            if vec is None:
                yield self._dead_letter(item_id, title, text, reason, partition, offset)
            else:
                yield self._update(item_id, title, False, vec, published)

    def _arm_tick(self, ctx) -> None:
        due = ctx.timer_service().current_processing_time() + self.model.reembed_interval_ms
        ctx.timer_service().register_processing_time_timer(due)
        self.tick.update(due)

    def process_element(self, item, ctx) -> Iterable:
        item_id = item["item_id"]
        if item["deleted"]:
            self.texts.remove(item_id)
        else:
            # (what a model swap re-embeds; the publication time rides along)
            self.texts.put(item_id, json.dumps([item["title"], item["text"],
                                                item["published_ts"]]))
        bucket_model = self.bucket_model.value()
        if bucket_model is None:  # the bucket's first item: it starts ticking
            self.bucket_model.update(self.model_id)
            self._arm_tick(ctx)
        elif bucket_model != self.model_id:  # a swap is running: embed this one right here
            pending = self.reembed.value()
            ids = json.loads(pending) if pending else []
            if item_id in ids:
                ids.remove(item_id)
                self.reembed.update(json.dumps(ids))
        count = self.count.value() or 0
        if count == 0:
            if item["deleted"]:
                yield self._update(item_id, "", True, None)
                return
            vec = self.embedder.lookup(item["text"])
            if vec is not None:
                self._report()
                yield self._update(item_id, item["title"], False, vec, item["published_ts"])
                return
            ctx.timer_service().register_processing_time_timer(
                ctx.timer_service().current_processing_time() + self.model.batch_timeout_ms)
        self.buffer.add(item)
        count += 1
        if count >= self.model.batch_size:
            yield from self._flush()
        else:
            self.count.update(count)

    def on_timer(self, timestamp: int, ctx) -> Iterable:
        if self.count.value():
            yield from self._flush()
        due = self.tick.value()
        if due is not None and timestamp >= due:
            yield from self._reembed_step()
            self._arm_tick(ctx)

    def _reembed_step(self) -> Iterable:
        """One background step of a model swap for this bucket (nothing when up to date)."""
        if self.bucket_model.value() == self.model_id:
            return
        pending = self.reembed.value()
        ids = json.loads(pending) if pending else None
        if ids is None:  # the swap starts
            ids = list(self.texts.keys())
            log.info("embed-items: re-embedding %d items of a bucket for model %s (was %s)",
                     len(ids), self.model_id, self.bucket_model.value())
        chunk, rest = ids[: self.model.batch_size], ids[self.model.batch_size:]
        entries = []
        for i in chunk:
            stored = self.texts.get(i)
            if stored is not None:
                title, text, *published = json.loads(stored)  # (older entries: no time)
                entries.append((i, title, text, -1, -1, published[0] if published else 0))
        for out in self._embedded(entries):
            if out[0] != DEAD_LETTER_KIND:
                self.reembedded.inc()
            yield out
        if rest:
            self.reembed.update(json.dumps(rest))
        else:
            self.reembed.clear()
            self.bucket_model.update(self.model_id)
            log.info("embed-items: bucket re-embedded for model %s", self.model_id)

    def _flush(self) -> Iterable:
        items = list(self.buffer.get() or [])
        self.buffer.clear()
        self.count.clear()
        live = iter(self._embedded([
            (it["item_id"], it["title"], it["text"], it["partition"], it["offset"],
             it["published_ts"]) for it in items if not it["deleted"]]))
        for it in items:  # in arrival order: a deletion after an upsert stays after it
            yield self._update(it["item_id"], "", True, None) if it["deleted"] else next(live)
