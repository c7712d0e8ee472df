"""Byte layouts of the rankers' broadcast state (catalog entries and item statistics) and of
the interactions topic (the user state's layout is in ``user_state.py``, the item branch's in
``item_stats.py``)."""

from __future__ import annotations

import struct

import numpy as np

_TITLE_LEN = struct.Struct("<I")
STATS = struct.Struct("<dd")  # log_pop, count


# A catalog entry: the title's length (with _PUBLISHED set when a publication time follows
# the title: entries written before it had none), the title, [the time,] the vector.
_PUBLISHED = 1 << 31
_TIME = struct.Struct("<q")


def pack_catalog_entry(title: str, vector: bytes, published_ts: int = 0) -> bytes:
    t = title.encode("utf-8")
    if not published_ts:
        return _TITLE_LEN.pack(len(t)) + t + bytes(vector)
    return _TITLE_LEN.pack(len(t) | _PUBLISHED) + t + _TIME.pack(published_ts) + bytes(vector)


def unpack_catalog_entry(data: bytes) -> tuple[str, np.ndarray, int]:
    """(title, vector, publication time or 0): the arguments of ``CatalogIndex.upsert``."""
    (n,) = _TITLE_LEN.unpack_from(data, 0)
    at, published = 4 + (n & ~_PUBLISHED), 0
    title = bytes(data[4:at]).decode("utf-8")
    if n & _PUBLISHED:
        (published,) = _TIME.unpack_from(data, at)
        at += _TIME.size
    return title, np.frombuffer(bytes(data[at:]), dtype=np.float32), published


def pack_interaction(event_type: str, weight: float, ts: int, context: list[str]) -> bytes:
    """An interactions-topic value (the key is the item id): ``type``, ``weight``, ``ts`` and
    the co-occurrence context, newline-separated UTF-8 (ids never hold control characters)."""
    return "\n".join([event_type, repr(float(weight)), str(int(ts)), *context]).encode("utf-8")


def unpack_interaction(data: bytes) -> tuple[str, float, int, list[str]]:
    parts = bytes(data).decode("utf-8").split("\n")
    return parts[0], float(parts[1]), int(parts[2]), parts[3:]


_BATCH_HEAD = struct.Struct("<I")
# id length, log_pop, count, then the lengths (+1; 0: none) of the counts and of their change
_BATCH_ENTRY = struct.Struct("<HddII")


def pack_stats_batch(entries) -> bytes:
    """Many items' statistics in one broadcast element (kind "stats"): ``(item_id, log_pop,
    count, counts, changes)`` each, ``counts`` the item's co-occurrence half as
    ``pack_counts`` bytes or None when they are not sent this time; ``changes`` None, or the
    entries of the half that changed since the item's counts were last sent (``pack_counts``
    bytes, a removed entry as count 0), which a ranker that holds the previous half applies
    in place of the whole (see ``CatalogMirror``)."""
    parts = [_BATCH_HEAD.pack(len(entries))]
    for item_id, log_pop, count, counts, changes in entries:
        key = item_id.encode("utf-8")
        parts.append(_BATCH_ENTRY.pack(len(key), log_pop, count,
                                       0 if counts is None else len(counts) + 1,
                                       0 if changes is None else len(changes) + 1))
        parts.append(key)
        for blob in (counts, changes):
            if blob is not None:
                parts.append(bytes(blob))
    return b"".join(parts)


def unpack_stats_batch(data: bytes) -> list[tuple[str, float, float, bytes | None,
                                                  bytes | None]]:
    data = bytes(data)
    (n,) = _BATCH_HEAD.unpack_from(data, 0)
    at, out = _BATCH_HEAD.size, []
    for _ in range(n):
        id_len, log_pop, count, counts_len, changes_len = _BATCH_ENTRY.unpack_from(data, at)
        at += _BATCH_ENTRY.size
        item_id = data[at:at + id_len].decode("utf-8")
        at += id_len
        blobs = []
        for length in (counts_len, changes_len):
            blobs.append(data[at:at + length - 1] if length else None)
            at += max(length - 1, 0)
        out.append((item_id, log_pop, count, *blobs))
    return out
