"""Embed a whole catalog ahead of the job (``streamrank embed``), with a progress bar.

Uses the same item text (:meth:`contracts.messages.Item.text`) and the same cache as the job's
embedding operator, so the job then finds every vector in the cache.
"""

from __future__ import annotations

import json
import time

from contracts.config import ModelSettings
from contracts.messages import InvalidRecord, parse_item
from udfs.embedding import CachedEmbedder


def warm_cache(item_records: list[dict], model: ModelSettings, progress: bool = True) -> dict:
    """Embed every valid, not yet cached item text; returns counts and timing."""
    from tqdm import tqdm

    now = int(time.time() * 1000)
    texts = []
    for rec in item_records:
        try:
            item = parse_item(json.dumps(rec).encode(), now_ms=now)
        except InvalidRecord:
            continue
        if not item.deleted:
            texts.append(item.text())
    embedder = CachedEmbedder.from_settings(model)
    try:
        missing = [t for t in dict.fromkeys(texts)
                   if embedder.cache.get(embedder.model_id, t) is None]
        t0 = time.perf_counter()
        chunk = max(model.batch_size * 8, 1)
        with tqdm(total=len(missing), desc="embedding catalog", unit="text",
                  disable=not progress or not missing) as bar:
            for i in range(0, len(missing), chunk):
                part = missing[i:i + chunk]
                embedder.embed(part)
                bar.update(len(part))
        seconds = time.perf_counter() - t0
    finally:
        embedder.close()
    return {"items": len(texts), "embedded": len(missing), "cached": len(texts) - len(missing),
            "seconds": round(seconds, 2),
            "texts_per_s": round(len(missing) / seconds, 1) if missing and seconds else None}
