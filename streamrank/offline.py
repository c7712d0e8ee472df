"""What the tools that replay a stream without Flink (eval, bench, chaos) share: the
dataset's catalog parsed and embedded as the job does it."""

from __future__ import annotations

import json
import time
from typing import Optional

import numpy as np

from contracts.config import Settings
from contracts.messages import InvalidRecord, parse_item
from recsys.catalog import CatalogIndex


def embed_items(settings: Settings, items: list[dict],
                now_ms: Optional[int] = None) -> tuple[list, np.ndarray, str]:
    """The items the job would accept, parsed as the job parses them, their vectors (through
    the embedding cache: the model runs only for texts not cached yet), and the model id."""
    from udfs.embedding import CachedEmbedder

    v, now = settings.validation, now_ms or int(time.time() * 1000)
    parsed = []
    for it in items:
        try:
            parsed.append(parse_item(json.dumps(it).encode(), now_ms=now,
                                     max_id_length=v.max_id_length,
                                     max_text_chars=v.max_text_chars))
        except InvalidRecord:
            continue
    emb = CachedEmbedder.from_settings(settings.model)
    try:
        vectors = emb.embed([it.text() for it in parsed])
        return parsed, np.asarray(vectors, np.float32), emb.model_id
    finally:
        emb.close()


def catalog_of(parsed: list, vectors: np.ndarray, capacity: int = 1024) -> CatalogIndex:
    """A catalog of the parsed items with their vectors (the float32 values the job
    broadcasts); deleted items left out."""
    cat = CatalogIndex(dim=vectors.shape[1], capacity=max(capacity, len(parsed)))
    for it, vec in zip(parsed, vectors):
        if not it.deleted:
            cat.upsert(it.item_id, it.title, vec, it.published_ts)
    return cat
