"""Byte layouts of the rankers' broadcast state (catalog entries and item statistics) and of
the interactions topic (the user state's layout is in ``user_state.py``, the item branch's in
``item_stats.py``)."""

from __future__ import annotations

import struct

import numpy as np

_TITLE_LEN = struct.Struct("<I")
STATS = struct.Struct("<dd")  # log_pop, count


def pack_catalog_entry(title: str, vector: bytes) -> bytes:
    t = title.encode("utf-8")
    return _TITLE_LEN.pack(len(t)) + t + bytes(vector)


def unpack_catalog_entry(data: bytes) -> tuple[str, np.ndarray]:
    (n,) = _TITLE_LEN.unpack_from(data, 0)
    title = bytes(data[4:4 + n]).decode("utf-8")
    return title, np.frombuffer(bytes(data[4 + n:]), dtype=np.float32)


def pack_interaction(event_type: str, weight: float, ts: int, context: list[str]) -> bytes:
    """An interactions-topic value (the key is the item id): ``type``, ``weight``, ``ts`` and
    the co-occurrence context, newline-separated UTF-8 (ids never hold control characters)."""
    return "\n".join([event_type, repr(float(weight)), str(int(ts)), *context]).encode("utf-8")


def unpack_interaction(data: bytes) -> tuple[str, float, int, list[str]]:
    parts = bytes(data).decode("utf-8").split("\n")
    return parts[0], float(parts[1]), int(parts[2]), parts[3:]
